#!/usr/bin/env python3
"""Replay TCP packets captured on the wire, as an attacker in another
network namespace would: the SYN alone, or the whole client side of the
handshake (SYN, the ACK carrying the proof, data).

Optionally the source address or port is rewritten (spoofing) and byte
strings in the payload are replaced by strings of the same length (editing
the claims of a signed token in place). When addresses or ports change, the
endpoints a protocol version 2 SYN claims (unsigned) are rewritten to match,
as an attacker would, so the server's enforcer reaches the check the test
is about. Checksums are recomputed, so the only thing wrong with the
packets is what the test means to be wrong.

Prints one JSON object: how many packets were sent and the replacements
made. Exits 2 when the capture holds no matching SYN or a replacement
string is not found (the test then fails with that message instead of
passing vacuously).
"""
import argparse
import json
import random
import socket
import struct
import sys
import time

from scapy.all import IP, TCP, Raw, rdpcap, send  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("pcap")
    ap.add_argument("--dst", required=True, help="server address in the capture")
    ap.add_argument("--dport", type=int, required=True)
    ap.add_argument("--to", help="send to this address instead of --dst")
    ap.add_argument("--to-port", type=int, help="send to this port instead of --dport")
    ap.add_argument("--src", help="rewrite the source address (spoof)")
    ap.add_argument("--new-sport", action="store_true", help="use a fresh source port")
    ap.add_argument("--what", choices=["syn", "handshake"], default="syn")
    ap.add_argument("--replace", action="append", default=[], help="OLD=NEW, same length, in the SYN payload")
    a = ap.parse_args()

    pkts = []
    for p in rdpcap(a.pcap):
        ip = p.getlayer(IP)
        if ip is None or not ip.haslayer(TCP):
            continue
        if ip.dst == a.dst and ip[TCP].dport == a.dport:
            pkts.append(ip)
    syns = [p for p in pkts if (p[TCP].flags & 0x12) == 0x02]
    if not syns:
        print(json.dumps({"error": "no SYN to %s:%d in capture (%d packets to it)" % (a.dst, a.dport, len(pkts))}))
        return 2
    syn = syns[0]
    flow = [syn]
    if a.what == "handshake":
        key = (syn.src, syn[TCP].sport)
        flow += [p for p in pkts[pkts.index(syn) + 1:] if (p.src, p[TCP].sport) == key and not (p[TCP].flags & 0x02)]

    replaced = []
    for pair in a.replace:
        old, new = pair.split("=", 1)
        if len(old) != len(new):
            print(json.dumps({"error": "replacement %r changes length" % pair}))
            return 2
        raw = bytes(syn[TCP].payload)
        if old.encode() not in raw:
            print(json.dumps({"error": "%r not in the SYN payload (%d bytes)" % (old, len(raw))}))
            return 2
        syn[TCP].remove_payload()
        syn = syn / Raw(raw.replace(old.encode(), new.encode()))
        flow[0] = syn
        replaced.append(pair)

    sport = random.randint(20000, 60000) if a.new_sport else None
    sent = 0
    for p in flow:
        p = p.copy()
        if a.src:
            p.src = a.src
        if a.to:
            p.dst = a.to
        if a.to_port:
            p[TCP].dport = a.to_port
        if sport:
            p[TCP].sport = sport
        raw = bytes(p[TCP].payload)
        if (p[TCP].flags & 0x12) == 0x02 and len(raw) > 30 and raw[0] in (0x21, 0x24) and raw[17] == 4:
            ends = struct.pack("!4sH4sH", socket.inet_aton(p.src), p[TCP].sport,
                               socket.inet_aton(p.dst), p[TCP].dport)
            p[TCP].remove_payload()
            p = p / Raw(raw[:18] + ends + raw[30:])
        del p.len
        del p.chksum
        del p[TCP].chksum
        send(p, verbose=0)
        sent += 1
        time.sleep(0.05)
    raw = bytes(syn[TCP].payload)
    print(json.dumps({"sent": sent, "payload": len(raw), "type": raw[0] if raw else 0, "replaced": replaced}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
