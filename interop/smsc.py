#!/usr/bin/python3
"""smsc.py - an SMS centre for the interop run, built on smppy (PyPI).

smppy (https://pypi.org/project/smppy/, on the smpppdu PDU codec) is an
SMPP 3.4 server library nobody here wrote. This app binds any
transceiver, writes every SMS it receives (submit_sm) as a JSON line to
--log, and answers each one with an SMS back from the number it was sent
to: "Re: TEXT", padded past 100 octets so that smppy sends it as several
deliver_sm with SAR parameters (a concatenated SMS for Confab to join).

  /usr/bin/python3 interop/smsc.py --port 2775 --log smsc.jsonl

Runs until it is stopped (SIGTERM); run.sh starts and stops it by PID.
"""
import argparse
import asyncio
import json
import logging
import signal
import sys

from smppy import Application

PADDING = " (an answer long enough that the SMS centre sends it in parts)"


def as_str(v):
    return v.decode() if isinstance(v, bytes) else (v or "")


class Smsc(Application):
    def __init__(self, log_path):
        super().__init__(name="interop-smsc", logger=logging.getLogger("smsc"))
        self.log_path = log_path

    def record(self, **event):
        with open(self.log_path, "a") as f:
            f.write(json.dumps(event) + "\n")

    async def handle_bound_client(self, client):
        self.record(event="bind", system_id=as_str(client.system_id))
        return client

    async def handle_unbound_client(self, client):
        self.record(event="unbind")

    async def handle_sms_received(self, client, source_number, dest_number, text):
        source, dest = as_str(source_number), as_str(dest_number)
        self.record(event="sms", source=source, destination=dest, text=text)
        # From the number the SMS went to (international: "+" and the
        # digits), to Confab's sender address.
        number = dest if dest.startswith("+") else "+" + dest
        await client.send_sms(source=number, dest=source or "confab",
                              text="Re: " + text + PADDING)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--log", required=True, help="JSON lines of what arrived")
    p.add_argument("--debug", action="store_true")
    args = p.parse_args()
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        stream=sys.stderr)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    Smsc(args.log).run(loop=loop, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
