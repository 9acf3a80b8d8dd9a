#!/usr/bin/env python3
"""Send a SYN without any token from a spoofed source address (an allowed
peer's), then the ACK a blind attacker would guess, then data.

Prints one JSON object with what was sent.
"""
import argparse
import json
import random
import sys
import time

from scapy.all import IP, TCP, Raw, send  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--src", required=True)
    ap.add_argument("--dst", required=True)
    ap.add_argument("--dport", type=int, required=True)
    a = ap.parse_args()
    sport = random.randint(20000, 60000)
    seq = random.randint(0, 2**32 - 1)
    ip = IP(src=a.src, dst=a.dst)
    send(ip / TCP(sport=sport, dport=a.dport, flags="S", seq=seq), verbose=0)
    time.sleep(0.1)
    send(ip / TCP(sport=sport, dport=a.dport, flags="A", seq=seq + 1, ack=random.randint(0, 2**32 - 1)), verbose=0)
    send(ip / TCP(sport=sport, dport=a.dport, flags="PA", seq=seq + 1, ack=random.randint(0, 2**32 - 1)) / Raw(b"hello\n"), verbose=0)
    print(json.dumps({"sent": 3, "sport": sport}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
