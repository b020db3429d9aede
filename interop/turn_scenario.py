#!/usr/bin/python3
"""turn_scenario.py - XEP-0215 credentials from Confab work in coturn.

A TURN server nobody here wrote (Debian's coturn, started by run.sh on
loopback with use-auth-secret) takes the credentials Confab hands out
(xeps/xep-0215.md). Steps, each with a timeout:

  1. turn-av (granted the right av) asks the server's domain for its
     services with slixmpp: stun, and turn over udp and tcp with a user
     name, password and expiry
  2. turnutils_uclient allocates a relay on coturn with those credentials
     and sends packets through it: they come back
  3. the same with a changed password: coturn refuses the allocation
  4. turn-none (no right) gets stun only, and a <credentials/> request
     for turn is refused with forbidden

Prints one JSON object and exits 0 when every step passed, 1 otherwise.
Run it with /usr/bin/python3 (Debian's python3-slixmpp).
"""
import re
import subprocess

from slixmpp.exceptions import IqError
from slixmpp.xmlstream import ET

from c2s_scenario import STEP_TIMEOUT, cli, login

NS = "urn:xmpp:extdisco:2"


async def ask(client, domain, payload):
    iq = client.make_iq_get(ito=domain)
    iq.append(ET.fromstring(payload))
    return await iq.send(timeout=STEP_TIMEOUT)


def services(iq, name):
    el = iq.xml.find("{%s}%s" % (NS, name))
    if el is None:
        raise RuntimeError("no <%s/> in %s" % (name, iq))
    return [dict(s.attrib) for s in el.findall("{%s}service" % NS)]


def allocate(args, username, password):
    """turnutils_uclient through the relay (-y: client to client)."""
    cmd = ["turnutils_uclient", "-y", "-n", "3", "-m", "1", "-u", username,
           "-w", password, "-p", str(args.turn_port), args.turn_host]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    return r.returncode, r.stdout + r.stderr


async def scenario(args, steps):
    av = await login(args, "turn-av")
    got = services(await ask(av, args.domain, "<services xmlns='%s'/>" % NS), "services")
    kinds = sorted((s.get("type"), s.get("transport")) for s in got)
    if kinds != [("stun", "udp"), ("turn", "tcp"), ("turn", "udp")]:
        raise RuntimeError("services: %r" % got)
    turn = next(s for s in got if s.get("type") == "turn" and s.get("transport") == "udp")
    for a in ("username", "password", "expires"):
        if not turn.get(a):
            raise RuntimeError("turn service without %s: %r" % (a, turn))
    if turn.get("host") != args.turn_host or turn.get("port") != str(args.turn_port):
        raise RuntimeError("turn service at %s:%s" % (turn.get("host"), turn.get("port")))
    steps.append("1 stun, and turn over udp and tcp with credentials until %s" % turn["expires"])

    rc, out = allocate(args, turn["username"], turn["password"])
    # The last tally of messages that came back through the relay.
    received = re.findall(r"tot_recv_msgs=(\d+)", out)
    if rc != 0 or not received or int(received[-1]) == 0:
        raise RuntimeError("coturn refused Confab's credentials (rc %d):\n%s" % (rc, out[-2000:]))
    steps.append("2 coturn allocated a relay with them and the packets came back")

    rc, out = allocate(args, turn["username"], turn["password"][:-2] + "xx")
    if rc == 0:
        raise RuntimeError("coturn accepted a changed password:\n%s" % out[-2000:])
    steps.append("3 a changed password is refused by coturn")

    none = await login(args, "turn-none")
    got = services(await ask(none, args.domain, "<services xmlns='%s'/>" % NS), "services")
    if [s.get("type") for s in got] != ["stun"]:
        raise RuntimeError("without a right: %r" % got)
    try:
        await ask(none, args.domain,
                  "<credentials xmlns='%s'><service type='turn' host='%s'/></credentials>"
                  % (NS, args.turn_host))
        raise RuntimeError("credentials handed out without a right")
    except IqError as e:
        if e.condition != "forbidden":
            raise RuntimeError("refused with %s, not forbidden" % e.condition)
    steps.append("4 without a right: stun only, and credentials are forbidden")

    for c in (av, none):
        c.disconnect()
        await c.disconnected


def extra(p):
    p.add_argument("--turn-host", default="127.0.0.1")
    p.add_argument("--turn-port", type=int, required=True)


if __name__ == "__main__":
    cli(__doc__, scenario, extra)
