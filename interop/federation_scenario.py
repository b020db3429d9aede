#!/usr/bin/python3
"""federation_scenario.py - a home user and a peer user on another server, over s2s.

Two slixmpp clients: the home user on Confab (--home-server:5222) and the
peer user on a real third-party server (Prosody or ejabberd of the
interop lab, --peer-server:5222), both over STARTTLS with their server's
certificate verified against --cafile (the lab CA, interop/lab/cert.sh).
Everything they exchange crosses federation (s2s). The users should be
fresh accounts (interop/federation.sh creates them). Steps, each
expectation bounded by 15 s:

  1. subscription handshake to 'both': home subscribes to the peer, the
     peer approves and subscribes back, home approves; both rosters
     (roster get) show subscription 'both'; each side receives the other's
     available presence
  2. chats both ways, to the bare JID and to the full JID: each arrives
     with its body, from the sender's full JID
  3. read markers never cross federation: from home to the peer, a
     marker-only <displayed/> (no type), a <displayed/> with a XEP-0334
     <store/> hint and an <acknowledged/> marker-only (type chat) never
     arrive (nothing within 2 s); a chat whose body carries <displayed/>,
     and one carrying <acknowledged/>, arrive with the body and without
     the marker; a XEP-0184 <received/> and a XEP-0333 <received/> marker
     arrive. The same from the peer to home
  4. rooms stay local: home creates fedroom-RANDOM@rooms.HOME (status
     201); the peer user's join gets an error presence 'forbidden';
     home's mediated invitation of the peer user gets an error message
     'forbidden' (and the peer gets nothing from the room); a muc#admin
     set making the peer's bare JID a member gets an IQ error 'forbidden'
  5. a chat to x@nowhere.invalid bounces: error 'remote-server-not-found'
  6. IQs across: home pings the peer's domain (XEP-0199) and asks it for
     disco#info and jabber:iq:version; the peer asks the home domain for
     disco#info and version and pings the home user's full JID (slixmpp's
     xep_0199 answers): every one gets a result
  7. the peer user logs out: home gets unavailable presence from the
     peer's full JID
  Then (when step 1 ran) both remove each other from their rosters, the
  peer logging in again for that if step 7 logged it out.

--subset basic runs steps 2 and 3 only (what federation.sh runs over
certificate-authenticated s2s). --skip 3,4 leaves steps out: those two
are Confab's own rules, so a run between two third-party servers (e.g.
Prosody as "home", ejabberd as "peer") skips them. Step 7 needs step 1.

Prints one JSON object (the steps passed, or where it stopped) and exits
0 when every selected step passed, 1 otherwise. Run it with
/usr/bin/python3 (Debian's python3-slixmpp).
"""
import argparse
import asyncio
import contextlib
import json
import logging
import sys
import uuid
from xml.sax.saxutils import quoteattr

from slixmpp import JID
from slixmpp.xmlstream import ET
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from c2s_scenario import STEP_TIMEOUT, Client, available_from, message_from, presence_from
from history_scenario import iq_ok, quiet
from muc_scenario import join, refused, status_codes

NS_CLIENT = "jabber:client"
NS_ROSTER = "jabber:iq:roster"
NS_MARKERS = "urn:xmpp:chat-markers:0"
NS_RECEIPTS = "urn:xmpp:receipts"
NS_HINTS = "urn:xmpp:hints"
NS_MUC_USER = "http://jabber.org/protocol/muc#user"
NS_PING = "urn:xmpp:ping"
NS_INFO = "http://jabber.org/protocol/disco#info"
NS_VERSION = "jabber:iq:version"
QUIET_S = 2.0  # how long "never arrives" is watched
ALL_STEPS = [1, 2, 3, 4, 5, 6, 7]
SUBSETS = {"full": ALL_STEPS, "basic": [2, 3]}


class FedClient(Client):
    """c2s_scenario's client, with every <message/> (with a body or not,
    errors too) in c.inbox, MUC, and answers to pings."""

    def __init__(self, jid, password, cafile):
        super().__init__(jid, password, cafile)
        self.register_plugin("xep_0045")
        self.register_plugin("xep_0199")
        # slixmpp's "message" event only reports messages with a body.
        self.del_event_handler("message", self._on_stanza)
        self.register_handler(Callback("any message", MatchXPath("{%s}message" % NS_CLIENT),
                                       self._on_stanza))
        self.add_event_handler("connection_failed", self._on_conn_failed)
        self.add_event_handler("ssl_invalid_chain", self._on_conn_failed)

    def _on_conn_failed(self, err):
        if not self.started.done():
            self.started.set_exception(RuntimeError("connection failed: %s" % err))


async def login(server, bare, password, cafile, resource):
    c = FedClient("%s/%s" % (bare, resource), password, cafile)
    c.connect(address=(server, 5222), force_starttls=True)
    try:
        await asyncio.wait_for(c.started, STEP_TIMEOUT)
    except asyncio.TimeoutError:
        raise RuntimeError("%s: not logged in at %s:5222 within %.0f s (--debug shows why)"
                           % (bare, server, STEP_TIMEOUT))
    except RuntimeError as e:
        raise RuntimeError("%s at %s:5222: %s" % (bare, server, e))
    return c


async def logout(c):
    c.disconnect()
    try:
        await asyncio.wait_for(c.disconnected, STEP_TIMEOUT)
    except asyncio.TimeoutError:
        raise RuntimeError("%s: did not disconnect within %.0f s" % (c.boundjid, STEP_TIMEOUT))


async def roster(c):
    """c's roster from a roster get: {jid: (subscription, ask)}."""
    res = await iq_ok(c, "get", ET.Element("{%s}query" % NS_ROSTER), "a roster get")
    return {i.get("jid"): (i.get("subscription", "none"), i.get("ask"))
            for i in res.xml.findall("{%s}query/{%s}item" % (NS_ROSTER, NS_ROSTER))}


async def roster_shows(c, jid, subscription):
    """Poll c's roster until jid has this subscription (bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STEP_TIMEOUT
    while True:
        items = await roster(c)
        if items.get(jid, (None,))[0] == subscription:
            return
        if loop.time() > deadline:
            raise RuntimeError("%s: its roster shows %s for %s after %.0f s, expected "
                               "subscription %r" % (c.boundjid, items.get(jid, "no item"), jid,
                                                    STEP_TIMEOUT, subscription))
        await asyncio.sleep(0.3)


async def roster_remove(c, jid):
    q = ET.Element("{%s}query" % NS_ROSTER)
    ET.SubElement(q, "{%s}item" % NS_ROSTER, {"jid": jid, "subscription": "remove"})
    await iq_ok(c, "set", q, "removing %s from its roster" % jid)


def with_id(mid):
    def pred(st):
        return st.name == "message" and st["id"] == mid
    return pred


# --- the steps: each takes the context `x` and returns its summary ------------

async def step_subscribe(x):
    h, p, hb, pb = x.home, x.peer, x.home_bare, x.peer_bare
    h.send_presence(pto=pb, ptype="subscribe")
    await p.expect("subscribe from %s" % hb, presence_from(hb, "subscribe"))
    p.send_presence(pto=hb, ptype="subscribed")
    p.send_presence(pto=hb, ptype="subscribe")
    await h.expect("subscribed from %s" % pb, presence_from(pb, "subscribed"))
    await h.expect("subscribe from %s" % pb, presence_from(pb, "subscribe"))
    h.send_presence(pto=pb, ptype="subscribed")
    await p.expect("subscribed from %s" % hb, presence_from(hb, "subscribed"))
    await roster_shows(h, pb, "both")
    await roster_shows(p, hb, "both")
    got_h = await h.expect("the available presence of %s" % pb, available_from(pb))
    got_p = await p.expect("the available presence of %s" % hb, available_from(hb))
    return ("subscription 'both' on both rosters; %s saw %s available, %s saw %s available"
            % (hb, got_h["from"], pb, got_p["from"]))


async def step_messages(x):
    seen = []
    for src, dst, src_bare, dst_bare in ((x.home, x.peer, x.home_bare, x.peer_bare),
                                         (x.peer, x.home, x.peer_bare, x.home_bare)):
        for to in (dst_bare, str(dst.boundjid)):
            body = "fed %s %s -> %s" % (x.run, src_bare, to)
            src.send_message(mto=to, mbody=body, mtype="chat")
            got = await dst.expect("the chat %r from %s" % (body, src.boundjid),
                                   message_from(src_bare, body))
            if got["from"] != src.boundjid:
                raise RuntimeError("%s: the chat %r came from %s, not the sender's full JID %s"
                                   % (dst.boundjid, body, got["from"], src.boundjid))
            seen.append(to)
    return "chats arrived, from the full JID, sent to %s" % seen


def marker_cases(run, tag, to):
    """(dropped, stripped, passed): lists of (message id, raw XML)."""
    to = quoteattr(to)

    def mid(kind):
        return "%s-%s-%s" % (kind, tag, run)

    dropped = [
        (mid("displayed"), "<message to=%s id='%s'><displayed xmlns='%s' id='ref-%s'/></message>"
         % (to, mid("displayed"), NS_MARKERS, run)),
        (mid("displayed-store"), "<message to=%s id='%s' type='chat'><displayed xmlns='%s' "
         "id='ref-%s'/><store xmlns='%s'/></message>"
         % (to, mid("displayed-store"), NS_MARKERS, run, NS_HINTS)),
        (mid("acknowledged"), "<message to=%s id='%s' type='chat'><acknowledged xmlns='%s' "
         "id='ref-%s'/></message>" % (to, mid("acknowledged"), NS_MARKERS, run)),
    ]
    stripped = [
        (mid("body-%s" % m), "<message to=%s id='%s' type='chat'><body>%s</body>"
         "<%s xmlns='%s' id='ref-%s'/></message>" % (to, mid("body-%s" % m), mid("body-%s" % m),
                                                      m, NS_MARKERS, run))
        for m in ("displayed", "acknowledged")
    ]
    passed = [
        (mid("receipt"), "<message to=%s id='%s'><received xmlns='%s' id='ref-%s'/></message>"
         % (to, mid("receipt"), NS_RECEIPTS, run)),
        (mid("received"), "<message to=%s id='%s'><received xmlns='%s' id='ref-%s'/></message>"
         % (to, mid("received"), NS_MARKERS, run)),
    ]
    return dropped, stripped, passed


async def step_markers(x):
    out = []
    for src, dst, src_bare, tag in ((x.home, x.peer, x.home_bare, "h2p"),
                                    (x.peer, x.home, x.peer_bare, "p2h")):
        dropped, stripped, passed = marker_cases(x.run, tag, str(dst.boundjid))
        # In this order: on one s2s stream what is dropped would arrive first.
        for _, raw in dropped + stripped + passed:
            src.send_raw(raw)
        for mid, _ in stripped:
            got = await dst.expect("the chat %s (body and a read marker) from %s" % (mid, src_bare),
                                   with_id(mid))
            if got["body"] != mid:
                raise RuntimeError("%s: %s arrived with body %r, expected %r: %s"
                                   % (dst.boundjid, mid, got["body"], mid, got))
            for m in ("displayed", "acknowledged"):
                if got.xml.find("{%s}%s" % (NS_MARKERS, m)) is not None:
                    raise RuntimeError("%s: %s arrived with its <%s/> marker (read markers must "
                                       "be stripped across federation): %s"
                                       % (dst.boundjid, mid, m, got))
        for (mid, _), (ns, what) in zip(passed, ((NS_RECEIPTS, "XEP-0184 receipt"),
                                                (NS_MARKERS, "XEP-0333 received marker"))):
            got = await dst.expect("the %s %s from %s" % (what, mid, src_bare), with_id(mid))
            if got.xml.find("{%s}received" % ns) is None:
                raise RuntimeError("%s: the %s %s arrived without its <received/>: %s"
                                   % (dst.boundjid, what, mid, got))
        drop_ids = {mid for mid, _ in dropped}
        await quiet(dst, lambda st: st.name == "message" and st["id"] in drop_ids, QUIET_S,
                    "a read marker that must not cross federation")
        out.append("%s -> %s: %d dropped, %d stripped, %d passed"
                   % (src_bare, dst.boundjid.bare, len(dropped), len(stripped), len(passed)))
    return "; ".join(out)


async def step_rooms(x):
    h, p, pb = x.home, x.peer, x.peer_bare
    room = "fedroom-%s@%s" % (x.run, x.args.home_rooms or "rooms." + x.args.home_domain)
    pres, _, _ = await join(h, room, "home")
    if "201" not in status_codes(pres):
        raise RuntimeError("%s: joining %s did not create it: status codes %s"
                           % (h.boundjid, room, sorted(status_codes(pres))))
    # Raw, not xep_0045's join_muc_wait: slixmpp 1.8.3 only sees an error
    # presence as the answer to a join if it echoes <x xmlns='muc'/>, which
    # servers need not do (Prosody's do not).
    pres = p.make_presence(pto="%s/peer" % room)
    pres.enable("muc_join")
    pres["id"] = "join-%s" % x.run
    pres.send()
    got = await p.expect("an answer from %s to its join" % room,
                         lambda st: st.name == "presence" and st["from"].bare == room)
    if got["type"] != "error":
        raise RuntimeError("%s: joined %s across federation, expected forbidden: %s"
                           % (p.boundjid, room, got))
    if got["error"]["condition"] != "forbidden":
        raise RuntimeError("%s: joining %s got %s (%s), not forbidden"
                           % (p.boundjid, room, got["error"]["condition"],
                              got["error"]["text"] or ""))
    inv = "invite-%s" % x.run
    h.send_raw("<message to=%s id='%s'><x xmlns='%s'><invite to=%s/></x></message>"
               % (quoteattr(room), inv, NS_MUC_USER, quoteattr(pb)))
    got = await h.expect("an error for its invitation of %s to %s" % (pb, room),
                         lambda st: with_id(inv)(st) and st["type"] == "error")
    if got["error"]["condition"] != "forbidden":
        raise RuntimeError("%s: the invitation of %s got %s, not forbidden: %s"
                           % (h.boundjid, pb, got["error"]["condition"], got))
    await refused(h, "making %s a member of %s" % (pb, room), "forbidden",
                  h.plugin["xep_0045"].set_affiliation(JID(room), "member", jid=JID(pb),
                                                       timeout=STEP_TIMEOUT))
    await quiet(p, lambda st: st.name == "message" and st["from"].bare == room, 1.0,
                "a message from %s (an invitation?)" % room)
    h.plugin["xep_0045"].leave_muc(JID(room), "home")
    return ("%s created (201); the peer's join, the invitation and the member affiliation: "
            "forbidden" % room)


async def step_bounce(x):
    h, to, mid = x.home, "x@nowhere.invalid", "bounce-%s" % x.run
    m = h.make_message(mto=to, mbody="to nowhere", mtype="chat")
    m["id"] = mid
    m.send()
    got = await h.expect("an error message from %s" % to,
                         lambda st: (st.name == "message" and st["type"] == "error"
                                     and st["from"].bare == to))
    cond = got["error"]["condition"]
    if cond != "remote-server-not-found":
        raise RuntimeError("%s: the chat to %s bounced with %s (%s), not remote-server-not-found"
                           % (h.boundjid, to, cond, got["error"]["text"]))
    return "the chat to %s bounced: %s %r" % (to, cond, got["error"]["text"])


async def info_and_version(c, jid):
    res = await iq_ok(c, "get", ET.Element("{%s}query" % NS_INFO), "disco#info of %s" % jid, to=jid)
    idents = [(i.get("category"), i.get("type"))
              for i in res.xml.findall("{%s}query/{%s}identity" % (NS_INFO, NS_INFO))]
    if not idents:
        raise RuntimeError("%s: disco#info of %s has no identity: %s" % (c.boundjid, jid, res))
    res = await iq_ok(c, "get", ET.Element("{%s}query" % NS_VERSION), "the version of %s" % jid,
                      to=jid)
    name = res.xml.findtext("{%s}query/{%s}name" % (NS_VERSION, NS_VERSION))
    if not name:
        raise RuntimeError("%s: the version of %s has no name: %s" % (c.boundjid, jid, res))
    ver = res.xml.findtext("{%s}query/{%s}version" % (NS_VERSION, NS_VERSION))
    return "%s: identities %s, version %s %s" % (jid, idents, name, ver or "")


async def step_iqs(x):
    h, p, pd, hd = x.home, x.peer, x.args.peer_domain, x.args.home_domain
    await iq_ok(h, "get", ET.Element("{%s}ping" % NS_PING), "a ping to %s" % pd, to=pd)
    a = await info_and_version(h, pd)
    b = await info_and_version(p, hd)
    await iq_ok(p, "get", ET.Element("{%s}ping" % NS_PING), "a ping to %s" % h.boundjid,
                to=h.boundjid)
    return "pings of %s and %s answered; %s; %s" % (pd, h.boundjid, a, b)


async def step_logout(x):
    full = str(x.peer.boundjid)
    await logout(x.peer)
    x.peer_online = False
    await x.home.expect("unavailable presence from %s" % full,
                        lambda st: (st.name == "presence" and str(st["from"]) == full
                                    and st["type"] == "unavailable"))
    return "%s logged out; %s got its unavailable presence" % (full, x.home_bare)


STEPS = {1: step_subscribe, 2: step_messages, 3: step_markers, 4: step_rooms,
         5: step_bounce, 6: step_iqs, 7: step_logout}


class Ctx:
    pass


async def scenario(args, steps):
    x = Ctx()
    x.args, x.run = args, uuid.uuid4().hex[:8]
    x.home_bare = "%s@%s" % (args.home_user, args.home_domain)
    x.peer_bare = "%s@%s" % (args.peer_user, args.peer_domain)
    selected = [s for s in SUBSETS[args.subset] if s not in args.skip]
    if 7 in selected and 1 not in selected:
        raise RuntimeError("step 7 needs step 1 (the subscription)")
    x.home = await login(args.home_server, x.home_bare, args.password, args.cafile,
                         "home-" + x.run)
    x.peer = await login(args.peer_server, x.peer_bare, args.password, args.cafile,
                         "peer-" + x.run)
    x.peer_online = True
    steps.append("0 %s and %s logged in over STARTTLS; steps %s"
                 % (x.home.boundjid, x.peer.boundjid, selected))
    try:
        for n in selected:
            steps.append("%d %s" % (n, await STEPS[n](x)))
        if 1 in selected:  # leave both rosters as they were
            await roster_remove(x.home, x.peer_bare)
            if not x.peer_online:
                x.peer = await login(args.peer_server, x.peer_bare, args.password, args.cafile,
                                     "peer-again-" + x.run)
                x.peer_online = True
            await roster_remove(x.peer, x.home_bare)
            steps.append("cleanup: %s and %s removed from each other's rosters"
                         % (x.home_bare, x.peer_bare))
    finally:
        for c in (x.home, x.peer if x.peer_online else None):
            if c is not None:
                with contextlib.suppress(Exception):
                    await logout(c)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--peer-server", required=True, help="address of the peer's c2s port")
    p.add_argument("--peer-domain", required=True)
    p.add_argument("--peer-user", required=True, help="local part, on the peer")
    p.add_argument("--home-server", default="127.0.0.10", help="address of Confab's c2s port")
    p.add_argument("--home-domain", default="confab.test")
    p.add_argument("--home-rooms", help="the home group-chat service (default rooms.HOME)")
    p.add_argument("--home-user", required=True, help="local part, on the home server")
    p.add_argument("--password", required=True, help="both users' password")
    p.add_argument("--cafile", required=True, help="the lab CA both servers' certificates chain to")
    p.add_argument("--subset", choices=sorted(SUBSETS), default="full")
    p.add_argument("--skip", default="", type=lambda s: {int(n) for n in s.split(",") if n},
                   help="comma-separated step numbers to leave out, e.g. 3,4")
    p.add_argument("--debug", action="store_true")
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


if __name__ == "__main__":
    main()
