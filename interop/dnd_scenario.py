#!/usr/bin/python3
"""dnd_scenario.py - Do Not Disturb defers delivery, seen by slixmpp.

A client nobody here wrote goes dnd and comes back (urn:confab:dnd-defer:0,
xeps/confab-dnd.md). Steps, each with a timeout:

  1. carol logs in with slixmpp and sets <show>dnd</show>; the server's
     disco#info lists urn:confab:dnd-defer:0
  2. alice sends carol 3 chats and a XEP-0333 displayed marker: the marker
     arrives at once, no chat within 1.5 s
  3. carol leaves dnd: the 3 chats arrive, in order, each with a XEP-0203
     delay and a stanza-id by carol's bare JID
  4. a chat sent now arrives at once, without a delay

Prints one JSON object and exits 0 when every step passed, 1 otherwise.
Run it with /usr/bin/python3 (Debian's python3-slixmpp).
"""
import asyncio

from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from c2s_scenario import STEP_TIMEOUT, available_from, cli, login, message_from

FEATURE = "urn:confab:dnd-defer:0"


async def quiet(client, pred, seconds):
    """Nothing matching pred arrives within `seconds`."""
    try:
        st = await asyncio.wait_for(client.expect("nothing", pred), seconds)
    except (asyncio.TimeoutError, RuntimeError):
        return
    raise RuntimeError("%s: got %s while it should wait" % (client.boundjid, st))


def any_chat(bare):
    def pred(st):
        return st.name == "message" and st["from"].bare == bare and st["body"] != ""
    return pred


async def scenario(args, steps):
    a_jid = "alice@%s" % args.domain
    c_jid = "carol@%s" % args.domain
    carol = await login(args, "carol")
    # slixmpp's "message" event is only for messages with a body.
    carol.register_handler(Callback(
        "marker", MatchXPath("{jabber:client}message/{urn:xmpp:chat-markers:0}displayed"),
        carol.inbox.put_nowait))
    await carol.expect("own presence", available_from(c_jid))
    carol.send_presence(pshow="dnd")
    await carol.expect("own dnd presence", available_from(c_jid, "dnd"))
    info = await carol.plugin["xep_0030"].get_info(jid=args.domain)
    if FEATURE not in info["disco_info"]["features"]:
        raise RuntimeError("%s not in the server's disco#info" % FEATURE)
    steps.append("1 carol is dnd; the server advertises %s" % FEATURE)

    alice = await login(args, "alice", "dnd")
    bodies = ["dnd %d" % i for i in range(1, 4)]
    for b in bodies:
        alice.send_message(mto=c_jid, mbody=b, mtype="chat")
    alice.send_raw("<message to='%s' id='mk1'><displayed xmlns='urn:xmpp:chat-markers:0' "
                   "id='m0'/></message>" % c_jid)
    await alice.plugin["xep_0030"].get_info(jid=args.domain)

    def marker(st):
        return st.name == "message" and st["id"] == "mk1"
    got = await carol.expect("the marker", marker)
    if got.xml.find("{urn:xmpp:chat-markers:0}displayed") is None:
        raise RuntimeError("the marker lost its payload: %s" % got)
    await quiet(carol, any_chat(a_jid), 1.5)
    steps.append("2 the marker passed at once, the 3 chats wait")

    carol.send_presence()
    for b in bodies:
        got = await carol.expect("held chat %r" % b, any_chat(a_jid))
        if got["body"] != b:
            raise RuntimeError("out of order: %r before %r" % (got["body"], b))
        if not got["delay"]["stamp"]:
            raise RuntimeError("held chat %r without a delay" % b)
        sid = got.xml.find("{urn:xmpp:sid:0}stanza-id")
        if sid is None or sid.get("by") != c_jid:
            raise RuntimeError("held chat %r without carol's stanza-id" % b)
    steps.append("3 out of dnd: the 3 chats in order, delayed, with stanza-ids")

    alice.send_message(mto=c_jid, mbody="now", mtype="chat")
    got = await carol.expect("live chat", message_from(a_jid, "now"))
    if got.xml.find("{urn:xmpp:delay}delay") is not None:
        raise RuntimeError("a live chat came with a delay")
    steps.append("4 a chat sent now arrives at once")

    for c in (alice, carol):
        c.disconnect()
        await c.disconnected


if __name__ == "__main__":
    cli(__doc__, scenario)
