# A real POP3 client (Python's poplib) for the smtp-gate labs, run inside a
# client network namespace:
#
#     python3 -c "$(cat pop3_client.py)" '{"host": "10.231.1.1", "steps": [...]}'
#
# It carries out the steps in order, in this one process, and prints one JSON
# list with a result object per step. A POP3 error reply (poplib.error_proto)
# is recorded as {"error": "-ERR ..."} and the plan goes on; anything else
# unexpected ends the script with a traceback and a non-zero status.
#
# Steps ("conn" names a POP3 connection, "a" by default; "timeout" in s):
#   {"op": "connect", "retry_busy": s}      open a connection, read the greeting
#                                           (retrying while it is -ERR [SYS/TEMP])
#   {"op": "connect", "tls": {"port", "cafile"}}
#                                           the same over TLS from the first octet
#                                           (POP3_SSL), the server's certificate
#                                           verified against cafile alone
#   {"op": "stls", "cafile"}                STLS, verified the same way
#   {"op": "login", "user", "password", "retry_in_use": s}   USER + PASS
#   {"op": "apop", "user", "secret"}        APOP with the greeting's timestamp
#   {"op": "stat"} {"op": "list"} {"op": "uidl"}
#   {"op": "retr", "n"}                     poplib's RETR: unstuffed lines
#   {"op": "raw_retr", "n"}                 RETR, the reply bytes as sent
#   {"op": "dele", "n"} {"op": "quit"}
#   {"op": "cut"}                           close the socket without QUIT
#   {"op": "noop"}
#   {"op": "smtp", "port": 25, "timeout"}   TCP connect + banner, no POP3; also
#                                           "syns": [least, most] SYNs it sent
#   {"op": "wait_refused", "timeout"}       connect to the POP3 port until it is
#                                           refused ("attempts": how many it took)
#   {"op": "sleep", "seconds"}
#   {"op": "kill", "pid", "signal"}         e.g. SIGTERM the daemon mid-session
#
# An OSError in a POP3 step (a connection the server closed) is recorded as
# {"oserror": "..."} and the plan goes on.
#
# Bytes are passed as latin-1 strings so that every octet survives JSON.

import json
import os
import poplib
import socket
import ssl
import struct
import sys
import time

plan = json.loads(sys.argv[1])
host = plan["host"]
pop_port = plan.get("port", 110)
conns = {}
results = []


def text(value):
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return str(value)


# Linux retransmits an unanswered SYN after one second at the earliest.
FIRST_SYN_RETRANSMISSION = 1.0


def syns_sent(sock):
    """The SYN and its retransmissions so far (tcpi_total_retrans)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return 1 + struct.unpack_from("I", info, 100)[0]


def smtp(port, timeout):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    started = time.monotonic()
    try:
        sock.settimeout(timeout)
        sock.connect((host, port))
    except ConnectionRefusedError:
        return {"smtp": "refused", "syns": closed(sock, started)}
    except (socket.timeout, TimeoutError):
        return {"smtp": "timeout", "syns": closed(sock, started)}
    except OSError as e:
        return {"smtp": "error", "detail": str(e), "syns": closed(sock, started)}
    syns = syns_sent(sock)
    try:
        sock.settimeout(10)
        banner = sock.makefile("rb").readline()
        return {"smtp": "connected", "banner": text(banner).rstrip("\r\n"), "syns": [syns, syns]}
    except OSError as e:
        return {"smtp": "error", "detail": "connected but no banner: %s" % e, "syns": [syns, syns]}
    finally:
        sock.close()


def closed(sock, started):
    """Closes a socket that did not connect; returns [least, most] SYNs it
    sent: one more may have left after the count only if it lived past the
    first retransmission."""
    counted = syns_sent(sock)
    sock.close()
    more = 1 if time.monotonic() - started >= FIRST_SYN_RETRANSMISSION else 0
    return [counted, counted + more]


def wait_refused(timeout):
    deadline = time.monotonic() + timeout
    attempts = 0
    while True:
        attempts += 1
        try:
            socket.create_connection((host, pop_port), timeout=timeout).close()
        except ConnectionRefusedError:
            return attempts
        if time.monotonic() >= deadline:
            raise TimeoutError("port %d still accepts after %s s" % (pop_port, timeout))
        time.sleep(0.02)


def verifying(cafile):
    """A client context that trusts cafile alone and checks the host name."""
    # With a cafile, the system's CAs are not loaded.
    return ssl.create_default_context(cafile=cafile)


def connect(step):
    deadline = time.monotonic() + float(step.get("retry_busy", 0))
    timeout = float(step.get("timeout", 10))
    while True:
        try:
            tls = step.get("tls")
            if tls:
                # The name checked is the host connected to (an IP
                # address: the certificate has it).
                return poplib.POP3_SSL(host, int(tls["port"]),
                                       timeout=timeout, context=verifying(tls["cafile"]))
            return poplib.POP3(host, pop_port, timeout=timeout)
        except poplib.error_proto as e:
            if b"[SYS/TEMP]" in e.args[0] and time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            raise


def login(p, step):
    deadline = time.monotonic() + float(step.get("retry_in_use", 0))
    while True:
        try:
            p.user(step["user"])
            return p.pass_(step["password"])
        except poplib.error_proto as e:
            if b"[IN-USE]" in e.args[0] and time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            raise


def raw_retr(p, n):
    p._putcmd("RETR %d" % n)
    data = b""
    for _ in range(100000):
        line = p.file.readline(poplib._MAXLINE + 2)
        if not line:
            break
        data += line
        if data.startswith(b"-ERR") or line == b".\r\n":
            break
    return data


for step in plan["steps"]:
    op = step["op"]
    name = step.get("conn", "a")
    result = {"op": op}
    started = time.monotonic()
    try:
        if op == "connect":
            p = connect(step)
            conns[name] = p
            result["welcome"] = text(p.getwelcome())
            if step.get("tls"):
                result["version"] = p.sock.version()
        elif op == "stls":
            p = conns[name]
            context = verifying(step["cafile"])
            result["reply"] = text(p.stls(context=context))
            result["version"] = p.sock.version()
        elif op == "login":
            result["reply"] = text(login(conns[name], step))
        elif op == "apop":
            result["reply"] = text(conns[name].apop(step["user"], step["secret"]))
        elif op == "stat":
            count, size = conns[name].stat()
            result["count"], result["size"] = count, size
        elif op in ("list", "uidl"):
            reply, lines, _ = getattr(conns[name], op)()
            result["reply"] = text(reply)
            result["lines"] = [text(l) for l in lines]
        elif op == "retr":
            reply, lines, octets = conns[name].retr(int(step["n"]))
            result["reply"] = text(reply)
            result["lines"] = [text(l) for l in lines]
            result["octets"] = octets
        elif op == "raw_retr":
            result["raw"] = text(raw_retr(conns[name], int(step["n"])))
        elif op == "dele":
            result["reply"] = text(conns[name].dele(int(step["n"])))
        elif op == "quit":
            result["reply"] = text(conns.pop(name).quit())
        elif op == "noop":
            result["reply"] = text(conns[name].noop())
        elif op == "sleep":
            time.sleep(float(step["seconds"]))
        elif op == "kill":
            os.kill(int(step["pid"]), int(step.get("signal", 15)))
        elif op == "cut":
            conns.pop(name).close()
        elif op == "smtp":
            result.update(smtp(int(step.get("port", 25)), float(step.get("timeout", 1))))
        elif op == "wait_refused":
            result["attempts"] = wait_refused(float(step["timeout"]))
        else:
            raise ValueError("unknown step %r" % op)
    except poplib.error_proto as e:
        result["error"] = text(e.args[0])
    except OSError as e:
        result["oserror"] = "%s: %s" % (type(e).__name__, e)
    result["elapsed"] = time.monotonic() - started
    results.append(result)

for p in conns.values():
    p.close()
print(json.dumps(results))
