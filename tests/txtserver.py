"""A DNS server answering TXT records from a JSON file: `txtserver.py RECORDS
READY [PORT]`. On port 53 it serves opendkim-testmsg, which asks the system
resolver: tests/dkimlab.py runs it in a private network and mount namespace
(`unshare`), never on the host's port 53."""
import json
import socket
import sys

import dns.message
import dns.rcode
import dns.rrset

records = json.load(open(sys.argv[1]))
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("127.0.0.1", int(sys.argv[3]) if len(sys.argv) > 3 else 53))
open(sys.argv[2], "w").close()
while True:
    data, addr = sock.recvfrom(4096)
    q = dns.message.from_wire(data)
    name = q.question[0].name.to_text(omit_final_dot=True).lower()
    resp = dns.message.make_response(q)
    if name in records and q.question[0].rdtype == 16:
        resp.answer.append(dns.rrset.from_text_list(q.question[0].name, 60, "IN", "TXT",
                                                    [records[name]]))
    else:
        resp.set_rcode(dns.rcode.NXDOMAIN)
    sock.sendto(resp.to_wire(), addr)
