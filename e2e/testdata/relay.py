#!/usr/bin/env python3
"""Token relay: an attacker that received an honest client's SYN (the
client connected to the attacker) presents that client's token to another
server from the attacker's own address, answers the server's SYN-ACK with
an ACK (carrying the proof bytes it saw, or none) and sends data.

With --proof-pcap the ACK also carries a proof option copied from another
handshake seen on the wire, so the server's enforcer has a wrong proof to
reject (not just a missing one).

The attacker namespace must drop its own kernel's RSTs (the test installs
that rule), or the kernel would reset the handshake it does not know about.

Prints one JSON object: whether a SYN-ACK came back and what was sent.
"""
import argparse
import json
import random
import sys

from scapy.all import IP, TCP, Raw, rdpcap, send, sr1  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("pcap", help="capture holding the honest client's SYN to us")
    ap.add_argument("--captured-dport", type=int, required=True, help="port the honest client connected to")
    ap.add_argument("--captured-src", required=True, help="address of the honest client whose token to relay")
    ap.add_argument("--proof-pcap", help="capture of another handshake whose proof option to put in the ACK")
    ap.add_argument("--dst", required=True, help="server to relay the token to")
    ap.add_argument("--dport", type=int, required=True)
    a = ap.parse_args()

    syn = ack = None
    for p in rdpcap(a.pcap):
        ip = p.getlayer(IP)
        if ip is None or not ip.haslayer(TCP) or ip[TCP].dport != a.captured_dport:
            continue
        if ip.src == a.captured_src and (ip[TCP].flags & 0x12) == 0x02:
            syn = ip
            break
    for p in rdpcap(a.proof_pcap) if a.proof_pcap else []:
        ip = p.getlayer(IP)
        if ip is not None and ip.haslayer(TCP) and (ip[TCP].flags & 0x12) == 0x10 \
                and any(o[0] == 253 for o in ip[TCP].options):
            # A handshake-completing ACK with a proof option: a proof the
            # attacker saw on the wire, for some other handshake.
            ack = ip
            break
    if syn is None or len(syn[TCP].payload) == 0:
        print(json.dumps({"error": "no SYN with a token from %s in the capture" % a.captured_src}))
        return 2
    token = bytes(syn[TCP].payload)
    proof = bytes(ack[TCP].payload) if ack is not None else b""  # normally empty: the proof is an option

    sport = random.randint(20000, 60000)
    seq = random.randint(0, 2**32 - 1)
    ip = IP(dst=a.dst)
    synack = sr1(ip / TCP(sport=sport, dport=a.dport, flags="S", seq=seq, options=syn[TCP].options) / Raw(token),
                 timeout=2, verbose=0)
    got = synack is not None and synack.haslayer(TCP) and (synack[TCP].flags & 0x12) == 0x12
    sent = 1
    if got:
        a_seq, a_ack = seq + 1, synack[TCP].seq + 1
        # The ACK with the relayed proof bytes (if any), then a plain one,
        # then data: whatever completes the handshake at the server's kernel.
        relayed = [(ack[TCP].options, proof)] if ack is not None else []
        for options, payload in relayed + [([], b"")]:
            pkt = ip / TCP(sport=sport, dport=a.dport, flags="A", seq=a_seq, ack=a_ack, options=options)
            if payload:
                pkt = pkt / Raw(payload)
            send(pkt, verbose=0)
            sent += 1
        send(ip / TCP(sport=sport, dport=a.dport, flags="PA", seq=a_seq, ack=a_ack) / Raw(b"hello\n"), verbose=0)
        sent += 1
    print(json.dumps({"synack": bool(got), "sent": sent, "token": len(token), "proof_ack": ack is not None}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
