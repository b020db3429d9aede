#!/usr/bin/python3
"""poison_scenario.py - reserved XML namespaces never reach a slixmpp client.

A stanza that binds the reserved xmlns namespace (or misuses the xml
prefix) is not well-formed XML; forwarded as is, it made a slixmpp
recipient's parser fail and disconnect, and offline storage queued it for
the next login. Steps, each with a timeout:

  1. bob logs in with slixmpp (a parser nobody here wrote)
  2. mallory, a raw client, sends each poison to bob and to carol (offline):
     every time its stream ends with <not-well-formed/>
  3. alice (slixmpp) writes to bob: bob gets it, and never disconnected
  4. carol logs in with slixmpp: no poison was stored for her, she stays

Prints one JSON object and exits 0 when every step passed, 1 otherwise.
Run it with /usr/bin/python3 (Debian's python3-slixmpp).
"""
import asyncio
import base64
import re
import ssl

from c2s_scenario import STEP_TIMEOUT, cli, login, message_from

POISONS = [
    "<x xmlns:p='http://www.w3.org/2000/xmlns/'/>",
    "<x xmlns='http://www.w3.org/2000/xmlns/'/>",
    "<x xmlns:xml='urn:not-xml'/>",
    "<x xmlns:p='http://www.w3.org/XML/1998/namespace'/>",
    "<x xmlns:xmlns='urn:x'/>",
]

HEADER = ("<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
          "xmlns:stream='http://etherx.jabber.org/streams' to='%s' version='1.0'>")


class Raw:
    """Just enough of a client to log in and send bytes as they are."""

    def __init__(self, reader, writer):
        self.r, self.w, self.buf = reader, writer, b""

    async def until(self, pattern):
        rx = re.compile(pattern.encode())
        while True:
            m = rx.search(self.buf)
            if m:
                self.buf = self.buf[m.end():]
                return m
            data = await asyncio.wait_for(self.r.read(65536), STEP_TIMEOUT)
            if not data:
                raise RuntimeError("closed while waiting for %r" % pattern)
            self.buf += data

    async def send(self, text):
        self.w.write(text.encode())
        await self.w.drain()

    async def stream(self, domain):
        await self.send(HEADER % domain)
        await self.until(r"</stream:features>")


async def raw_login(args, user, password, resource):
    reader, writer = await asyncio.open_connection(args.server, args.port)
    c = Raw(reader, writer)
    await c.stream(args.domain)
    await c.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    await c.until(r"<proceed")
    ctx = ssl.create_default_context(cafile=args.cafile)
    await writer.start_tls(ctx, server_hostname=args.domain)
    c.buf = b""
    await c.stream(args.domain)
    token = base64.b64encode(("\0%s\0%s" % (user, password)).encode()).decode()
    await c.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>%s</auth>" % token)
    await c.until(r"<success")
    await c.stream(args.domain)
    await c.send("<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                 "<resource>%s</resource></bind></iq>" % resource)
    await c.until(r"</iq>")
    return c


async def scenario(args, steps):
    d = args.domain
    bob = await login(args, "bob")
    gone = []
    bob.add_event_handler("disconnected", lambda _e: gone.append(True))
    steps.append("1 bob logged in: %s" % bob.boundjid)

    n = 0
    for poison in POISONS:
        for to in (str(bob.boundjid), "carol@%s" % d):
            n += 1
            m = await raw_login(args, "mallory", args.password, "p%d" % n)
            await m.send("<message to='%s' type='chat'><body>poison %d</body>%s</message>"
                         % (to, n, poison))
            await m.until(r"<not-well-formed")
            m.w.close()
    steps.append("2 %d poison messages refused with not-well-formed" % n)

    alice = await login(args, "alice")
    alice.send_message(mto=bob.boundjid.bare, mbody="still there?", mtype="chat")
    got = await bob.expect("alice's message", message_from("alice@%s" % d, "still there?"))
    if gone:
        raise RuntimeError("bob was disconnected")
    for st in bob.kept:
        if st.name == "message" and "poison" in (st["body"] or ""):
            raise RuntimeError("bob got %r" % st["body"])
    steps.append("3 bob is still connected and got %r" % got["body"])

    carol = await login(args, "carol")
    await asyncio.sleep(1.0)
    for st in carol.kept + [carol.inbox.get_nowait() for _ in range(carol.inbox.qsize())]:
        if st.name == "message":
            raise RuntimeError("carol got a stored message: %r" % st["body"])
    alice.send_message(mto="carol@%s" % d, mbody="hi carol", mtype="chat")
    await carol.expect("alice's message", message_from("alice@%s" % d, "hi carol"))
    steps.append("4 nothing was stored for carol; she is connected")

    for c in (alice, bob, carol):
        c.disconnect()
        await c.disconnected


def main():
    cli(__doc__, scenario)


if __name__ == "__main__":
    main()
