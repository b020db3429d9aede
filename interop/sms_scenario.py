#!/usr/bin/python3
"""sms_scenario.py - the SMS gateway against an SMS centre nobody here wrote.

run.sh starts interop/smsc.py (an SMPP 3.4 server on smppy from PyPI) and
Confab with [sms] backend = "smpp" bound to it. Steps, each with a
timeout:

  1. sms-pleb (no right sms) writes to +4915112345678@sms.DOMAIN: the
     message comes back as an error with forbidden, and the SMS centre
     receives nothing
  2. sms-alice (granted sms) writes to the same number with slixmpp: the
     SMS centre receives one submit_sm for 4915112345678 with the text
  3. the SMS centre answers with a long SMS in several deliver_sm (SAR
     parameters): sms-alice, who wrote to the number last, gets it as one
     chat message from +4915112345678@sms.DOMAIN, the parts joined in
     order
  4. the answer is in sms-alice's archive (MAM)

Prints one JSON object and exits 0 when every step passed, 1 otherwise.
Run it with /usr/bin/python3 (Debian's python3-slixmpp).
"""
import asyncio
import json
import os

from slixmpp import JID

from c2s_scenario import STEP_TIMEOUT, cli, login

NUMBER = "+4915112345678"
TEXT = "Hallo aus dem Interop-Test"
NS_MAM = "urn:xmpp:mam:2"
NS_FWD = "urn:xmpp:forward:0"
NS_CLIENT = "jabber:client"
PADDING = " (an answer long enough that the SMS centre sends it in parts)"


def smsc_events(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


async def wait_for(what, cond):
    async def loop():
        while True:
            v = cond()
            if v:
                return v
            await asyncio.sleep(0.1)
    try:
        return await asyncio.wait_for(loop(), STEP_TIMEOUT * 4)
    except asyncio.TimeoutError:
        raise RuntimeError("timed out waiting for %s" % what)


async def scenario(args, steps):
    gw = "sms." + args.domain
    to = "%s@%s" % (NUMBER, gw)
    # The gateway binds as soon as Confab starts.
    await wait_for("Confab's bind at the SMS centre",
                   lambda: any(e["event"] == "bind" for e in smsc_events(args.smsc_log)))

    pleb = await login(args, "sms-pleb")
    pleb.send_message(mto=to, mbody="no right", mtype="chat")
    err = await pleb.expect("the refusal", lambda st: st.name == "message"
                            and st["type"] == "error" and st["from"].bare == to)
    if err["error"]["condition"] != "forbidden":
        raise RuntimeError("refused with %s, not forbidden" % err["error"]["condition"])
    steps.append("1 without the right sms: forbidden (%s)" % err["error"]["text"])

    alice = await login(args, "sms-alice")
    alice.send_message(mto=to, mbody=TEXT, mtype="chat")
    sms = await wait_for("the submit_sm", lambda: [
        e for e in smsc_events(args.smsc_log) if e["event"] == "sms"])
    if len(sms) != 1 or sms[0]["destination"].lstrip("+") != NUMBER[1:] or sms[0]["text"] != TEXT:
        raise RuntimeError("the SMS centre received %r" % sms)
    steps.append("2 the SMS centre received one SMS: %r" % sms[0])

    want = "Re: " + TEXT + PADDING
    m = await alice.expect("the answer", lambda st: st.name == "message"
                           and st["from"].bare == "%s@%s" % (NUMBER, gw)
                           and st["type"] != "error")
    if m["body"] != want:
        raise RuntimeError("the answer arrived as %r, not %r" % (m["body"], want))
    steps.append("3 the answer in parts arrived joined: %r" % m["body"])

    alice.register_plugin("xep_0313")
    iq = await alice.plugin["xep_0313"].retrieve(with_jid=JID("%s@%s" % (NUMBER, gw)),
                                                 timeout=STEP_TIMEOUT)
    got = []
    for r in iq["mam"]["results"]:
        b = r.xml.find("{%s}result/{%s}forwarded/{%s}message/{%s}body"
                       % (NS_MAM, NS_FWD, NS_CLIENT, NS_CLIENT))
        got.append(b.text if b is not None else None)
    if got != [TEXT, want]:
        raise RuntimeError("the archive holds %r" % got)
    steps.append("4 both are in the archive")
    if len([e for e in smsc_events(args.smsc_log) if e["event"] == "sms"]) != 1:
        raise RuntimeError("the refused SMS reached the SMS centre")

    for c in (pleb, alice):
        c.disconnect()
        await c.disconnected


def extra(p):
    p.add_argument("--smsc-log", required=True)


if __name__ == "__main__":
    cli(__doc__, scenario, extra)
