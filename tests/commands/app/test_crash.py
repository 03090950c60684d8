"""kill -9 of a real ``graft app`` while a client labels: every label the app answered for is there after a
restart, and the action log replays to the same labels."""

from __future__ import annotations

import signal
import threading
import time
import urllib.error

import pytest
from test_flow import get, graft_app, post

from graft.commands.app.store import Store

pytestmark = pytest.mark.slow


def test_kill_9_while_labelling_loses_no_saved_label(hymenoptera, tmp_path) -> None:
    project, log = tmp_path / "project", tmp_path / "app.log"
    args = ("--data", str(hymenoptera / "train"), "--pool", str(hymenoptera / "val"))
    saved: dict[int, str] = {}
    with graft_app(project, *args, log=log) as (url, proc):
        pool = [item["id"] for item in get(url + "api/images?pool=1&limit=1000")["items"]]
        stop = threading.Event()

        def label() -> None:
            for n, image_id in enumerate(pool):
                if stop.is_set():
                    return
                label = ("ants", "bees")[n % 2]
                try:
                    post(url + "api/label", {"id": image_id, "label": label, "source": "keyboard"})
                except (urllib.error.URLError, ConnectionError, OSError):
                    return  # the app is gone: this label was never answered
                saved[image_id] = label

        client = threading.Thread(target=label)
        client.start()
        while len(saved) < 40:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)  # mid-stream: a request is in flight
        proc.wait()
        stop.set()
        client.join(30)
    assert 40 <= len(saved) < len(pool)
    with graft_app(project, log=log) as (url, _):
        for image_id, label in saved.items():
            assert get(url + f"api/images/{image_id}")["label"] == label
    store = Store(project)
    table = {row.id: row.label for row in store.images(limit=10**6)[1]} | {
        row.id: row.label for row in store.images(pool=True, limit=10**6)[1]
    }
    replayed = store.replay()
    assert replayed.labels == table
