"""wasi-probe: a test fixture. A Python guest imports WASI (componentize-py always does), so
the host links a deny-all WASI. On every event this projection tries what a plugin must not
be able to do and records what it got, so a test can check the host denied each attempt:
reading a file, listing the root directory, the environment, the real time, a network
connection; and it draws a random number, which must be the same on every run.
"""

import json
import os
import random
import time

import wit_world
from wit_world.imports import types


def attempt(f):
    try:
        return {"ok": f()}
    except Exception as e:  # what was denied, and how
        return {"denied": type(e).__name__}


def connect():
    import socket

    socket.create_connection(("127.0.0.1", 4222), timeout=1).close()
    return "connected"


class WitWorld(wit_world.WitWorld):
    def init(self, config: str) -> None:
        pass

    def apply(self, state, event):
        seen = {
            "file": attempt(lambda: open("/etc/hostname").read()),
            "root": attempt(lambda: os.listdir("/")),
            "environment": dict(os.environ),
            "time": time.time(),
            "random": random.random(),
            "network": attempt(connect),
        }
        print(f"probe saw event {event.sequence}")
        row = json.dumps(seen)
        upsert = types.Effect_Upsert(types.UpsertRow(table="wasi_probe", key=event.aggregate_id, row=row))
        return row.encode(), [upsert]

    def query(self, states, request):
        return "{}"
