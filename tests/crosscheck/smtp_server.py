"""A real SMTP server (aiosmtpd, from PyPI) for the email channel's tests.

Usage: smtp_server.py MAILDIR [REJECT_FIRST]
Binds 127.0.0.1 on a free port, prints the port on stdout, then stores every message it
accepts in the Maildir. The first REJECT_FIRST messages are refused with a transient
"451 try again later" (to test retries), and every recipient whose address starts with
"bounce" with a permanent "550 user unknown" (a mistyped address).
"""

import asyncio
import os
import socket
import sys

from aiosmtpd.handlers import Mailbox
from aiosmtpd.smtp import SMTP


class FlakyMailbox(Mailbox):
    def __init__(self, maildir, reject_first):
        super().__init__(maildir)
        self.reject_first = reject_first

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.lower().startswith("bounce"):
            return "550 5.1.1 user unknown"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.reject_first > 0:
            self.reject_first -= 1
            return "451 4.3.0 try again later"
        return await super().handle_DATA(server, session, envelope)


async def main():
    for sub in ("tmp", "new", "cur"):
        os.makedirs(os.path.join(sys.argv[1], sub), exist_ok=True)
    handler = FlakyMailbox(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 0)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    server = await asyncio.get_running_loop().create_server(lambda: SMTP(handler, hostname="localhost"), sock=sock)
    print(sock.getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


asyncio.run(main())
