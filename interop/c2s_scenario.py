#!/usr/bin/python3
"""c2s_scenario.py - two slixmpp clients against a running Confab.

slixmpp is a client nobody here wrote: this checks that Confab speaks the
protocol the way a third-party client expects. Steps, each with a timeout:

  1. alice and bob log in over STARTTLS (certificate verified with --cafile)
  2. alice asks bob for a presence subscription, bob approves; and back
  3. each sees the other's available presence; alice goes "away", bob sees it
  4. a chat message alice -> bob and bob -> alice
  5. bob logs out; alice sees him unavailable and writes to him
  6. bob logs in again and receives the message, with a XEP-0203 delay
  7. alice logs in on a second device with message carbons (XEP-0280)
     enabled; it gets copies of what bob sends to her first device and of
     what that device sends to bob

Prints one JSON object (the steps passed, or where it stopped) and exits
0 when every step passed, 1 otherwise. Needs Debian's python3-slixmpp:
run it with /usr/bin/python3.
"""
import argparse
import asyncio
import json
import logging
import sys

import slixmpp

STEP_TIMEOUT = 15.0


class Client(slixmpp.ClientXMPP):
    """A client that records what arrives, for the scenario to await."""

    def __init__(self, jid, password, cafile):
        super().__init__(jid, password)
        self.ca_certs = cafile
        self.register_plugin("xep_0030")
        self.register_plugin("xep_0203")
        self.register_plugin("xep_0280")
        # The scenario answers subscription requests itself.
        self.auto_authorize = None
        self.auto_subscribe = False
        self.inbox = asyncio.Queue()
        self.kept = []  # arrived while waiting for something else
        self.started = asyncio.get_event_loop().create_future()
        self.add_event_handler("session_start", self._on_start)
        self.add_event_handler("failed_auth", self._on_fail)
        self.add_event_handler("message", self._on_stanza)
        self.add_event_handler("presence", self._on_stanza)
        self.add_event_handler("carbon_received", self._on_stanza)
        self.add_event_handler("carbon_sent", self._on_stanza)

    async def _on_start(self, _event):
        await self.get_roster()
        self.send_presence()
        if not self.started.done():
            self.started.set_result(True)

    def _on_fail(self, _event):
        if not self.started.done():
            self.started.set_exception(RuntimeError("authentication failed"))

    def _on_stanza(self, stanza):
        self.inbox.put_nowait(stanza)

    async def expect(self, what, pred):
        """Wait for a stanza matching pred; others are kept for later."""
        for i, st in enumerate(self.kept):
            if pred(st):
                return self.kept.pop(i)

        async def loop():
            while True:
                st = await self.inbox.get()
                if pred(st):
                    return st
                self.kept.append(st)
        try:
            return await asyncio.wait_for(loop(), STEP_TIMEOUT)
        except asyncio.TimeoutError:
            raise RuntimeError("%s: timed out waiting for %s" % (self.boundjid, what))


def presence_from(bare, ptype=None):
    def pred(st):
        return (st.name == "presence" and st["from"].bare == bare
                and (ptype is None or st["type"] == ptype))
    return pred


def available_from(bare, show=None):
    def pred(st):
        return (st.name == "presence" and st["from"].bare == bare
                and st["type"] in ("available", "chat", "away", "xa", "dnd")
                and (show is None or st["show"] == show))
    return pred


def message_from(bare, body):
    def pred(st):
        return (st.name == "message" and st["type"] in ("chat", "normal")
                and st["from"].bare == bare and st["body"] == body)
    return pred


def carbon(kind, body):
    """A carbon copy ('received' or 'sent') of a message with this body."""
    def pred(st):
        if st.name != "message" or st["from"] != st["to"].bare:
            return False
        inner = st["carbon_%s" % kind]
        return inner is not None and inner["body"] == body
    return pred


async def login(args, user, resource=""):
    jid = "%s@%s" % (user, args.domain) + ("/" + resource if resource else "")
    c = Client(jid, args.password, args.cafile)
    c.connect(address=(args.server, args.port), force_starttls=True)
    await asyncio.wait_for(c.started, STEP_TIMEOUT)
    return c


async def scenario(args, steps):
    a_jid = "%s@%s" % (args.user1, args.domain)
    b_jid = "%s@%s" % (args.user2, args.domain)

    alice = await login(args, args.user1)
    bob = await login(args, args.user2)
    steps.append("1 both logged in over STARTTLS: %s, %s" % (alice.boundjid, bob.boundjid))

    for x, y, x_jid, y_jid in ((alice, bob, a_jid, b_jid), (bob, alice, b_jid, a_jid)):
        x.send_presence(pto=y_jid, ptype="subscribe")
        await y.expect("subscribe from %s" % x_jid, presence_from(x_jid, "subscribe"))
        y.send_presence(pto=x_jid, ptype="subscribed")
        await x.expect("subscribed from %s" % y_jid, presence_from(y_jid, "subscribed"))
    steps.append("2 subscriptions approved both ways")

    await alice.expect("bob available", available_from(b_jid))
    await bob.expect("alice available", available_from(a_jid))
    alice.send_presence(pshow="away", pstatus="coffee")
    got = await bob.expect("alice away", available_from(a_jid, "away"))
    if got["status"] != "coffee":
        raise RuntimeError("status text lost: %r" % got["status"])
    steps.append("3 presence exchanged, away seen with its status")

    alice.send_message(mto=b_jid, mbody="hello bob", mtype="chat")
    got = await bob.expect("message from alice", message_from(a_jid, "hello bob"))
    if got["from"] != alice.boundjid:
        raise RuntimeError("from not stamped with the full JID: %s" % got["from"])
    bob.send_message(mto=got["from"], mbody="hello alice", mtype="chat")
    await alice.expect("message from bob", message_from(b_jid, "hello alice"))
    steps.append("4 messages both ways")

    bob.disconnect()
    await bob.disconnected
    await alice.expect("bob unavailable", presence_from(b_jid, "unavailable"))
    alice.send_message(mto=b_jid, mbody="while you were out", mtype="chat")
    # A round trip to the server orders after the message's storage.
    await alice.plugin["xep_0030"].get_info(jid=args.domain)
    steps.append("5 bob offline, message sent to him")

    bob = await login(args, args.user2)
    got = await bob.expect("offline message", message_from(a_jid, "while you were out"))
    stamp = got["delay"]["stamp"]
    if not stamp:
        raise RuntimeError("offline message without a XEP-0203 delay")
    steps.append("6 offline message delivered at login, delayed since %s" % stamp.isoformat())

    phone = await login(args, args.user1, "phone")
    await phone.plugin["xep_0280"].enable()
    bob.send_message(mto=alice.boundjid, mbody="to your desk", mtype="chat")
    await alice.expect("message from bob", message_from(b_jid, "to your desk"))
    await phone.expect("received carbon", carbon("received", "to your desk"))
    alice.send_message(mto=b_jid, mbody="from my desk", mtype="chat")
    await bob.expect("message from alice", message_from(a_jid, "from my desk"))
    await phone.expect("sent carbon", carbon("sent", "from my desk"))
    steps.append("7 second device got received and sent carbons")

    for c in (alice, bob, phone):
        c.disconnect()
        await c.disconnected


async def disconnect_all(clients):
    """Disconnect each client, each within STEP_TIMEOUT."""
    for c in clients:
        c.disconnect()
        try:
            await asyncio.wait_for(c.disconnected, STEP_TIMEOUT)
        except asyncio.TimeoutError:
            raise RuntimeError("%s: did not disconnect within %.0f s" % (c.boundjid, STEP_TIMEOUT))


def cli(doc, scenario, extra_args=None):
    """Parse the common arguments, run `scenario(args, steps)`, print the
    steps as JSON and exit 0 when it completed, 1 otherwise."""
    p = argparse.ArgumentParser(description=doc.split("\n")[0])
    p.add_argument("--server", required=True, help="address of Confab's c2s port")
    p.add_argument("--port", type=int, default=5222)
    p.add_argument("--domain", required=True)
    p.add_argument("--cafile", required=True, help="certificate Confab presents")
    p.add_argument("--password", required=True, help="the users' password")
    p.add_argument("--debug", action="store_true")
    if extra_args:
        extra_args(p)
    args = p.parse_args()
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.CRITICAL,
                        format="%(levelname)-8s %(message)s", stream=sys.stderr)
    steps = []
    result = {"steps": steps}
    try:
        asyncio.run(scenario(args, steps))
        result["ok"] = True
    except Exception as e:  # report where it stopped
        result["ok"] = False
        result["error"] = "%s: %s" % (type(e).__name__, e)
    print(json.dumps(result, indent=1))
    sys.exit(0 if result["ok"] else 1)


def main():
    def users(p):
        p.add_argument("--user1", default="alice")
        p.add_argument("--user2", default="bob")
    cli(__doc__, scenario, users)


if __name__ == "__main__":
    main()
