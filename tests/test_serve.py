"""`musiclm serve` on a tiny random-init MusicLM (melody-conditioned, with w2v-BERT to continue
audio): the JSON API's round trip, bad input answered 4xx with a message, two requests at once,
a full queue answered 503, story + melody + continuation, a restart that keeps the results, the
CLI on a pipeline-shaped directory, and the page driven in headless Chromium like a user."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import requests
import soundfile
from browser import Browser
from cli import env, musiclm
from model_dirs import SR

from musiclm_jax.serve import Studio, create_app, load_served

SECONDS = 1.0
MAX_UPLOAD = 256 << 10


@pytest.fixture(scope="module")
def model_dirs(melody_model_dirs, tokenizer_model_dirs):
    return {**melody_model_dirs, "w2v_bert_dir": tokenizer_model_dirs["w2v_bert_dir"]}


@pytest.fixture(scope="module")
def served(model_dirs):
    return load_served(model_dirs=model_dirs)


@pytest.fixture(scope="module")
def studio(served, tmp_path_factory):
    s = Studio(
        served,
        str(tmp_path_factory.mktemp("serve")),
        max_seconds=3.0,
        default_seconds=SECONDS,
        queue_size=2,
        max_upload_bytes=MAX_UPLOAD,
        max_upload_seconds=5.0,
    )
    yield s
    s.stop()


@pytest.fixture(scope="module")
def server(studio):
    """The app on a free localhost port, in a thread: its base URL."""
    import uvicorn

    app = create_app(studio, allowed_hosts=["127.0.0.1", "localhost"])
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    assert srv.started, "the server did not start"
    yield f"http://127.0.0.1:{srv.servers[0].sockets[0].getsockname()[1]}"
    srv.should_exit = True
    thread.join(10)


def wav_bytes(audio, rate=SR) -> bytes:
    import io

    buf = io.BytesIO()
    soundfile.write(buf, np.asarray(audio, np.float32), rate, format="WAV")
    return buf.getvalue()


def tune(seconds=2.0, rate=SR) -> np.ndarray:
    """Four notes, a little noise: something a microphone might give."""
    t = np.arange(int(seconds * rate)) / rate
    pitch = 440.0 * 2 ** (np.array([0, 4, 7, 12])[np.minimum((t / seconds * 4).astype(int), 3)] / 12)
    return 0.4 * np.sin(2 * np.pi * np.cumsum(pitch) / rate) + 0.01 * np.random.default_rng(0).standard_normal(t.size)


def finished(server, job_id, timeout=240) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = requests.get(f"{server}/api/jobs/{job_id}", timeout=10).json()
        if job["status"] not in ("queued", "running"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s")


def audio_seconds(server, job) -> float:
    assert job["status"] == "done", job
    r = requests.get(server + job["result"]["files"]["audio.wav"], timeout=10)
    assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"
    info = soundfile.info(__import__("io").BytesIO(r.content))
    return info.frames / info.samplerate


def test_api_round_trip(server):
    info = requests.get(f"{server}/api/info", timeout=10).json()
    assert info["can_follow_melody"] and info["can_continue"] and info["max_seconds"] == 3.0
    prompt = "Lo-fi hip hop beat w/ mellow Rhodes chords & vinyl crackle, ~80 BPM, late night study vibes"
    r = requests.post(f"{server}/api/jobs", json={"prompt": prompt, "seconds": 2.0, "seed": 7}, timeout=30)
    assert r.status_code == 202, r.text
    assert r.headers["location"] == r.json()["url"]
    job = finished(server, r.json()["id"])
    assert abs(audio_seconds(server, job) - 2.0) < 1e-3
    assert -1.0 <= job["result"]["mulan_score"] <= 1.0
    files = job["result"]["files"]
    png = requests.get(server + files["spectrogram.png"], timeout=10)
    assert png.content[:8] == b"\x89PNG\r\n\x1a\n"
    sidecar = requests.get(server + files["sidecar.json"] + "?download=1", timeout=10)
    assert sidecar.json()["prompt"] == prompt and sidecar.json()["seed"] == 7
    assert "attachment" in sidecar.headers["content-disposition"]
    assert "models" not in sidecar.json() and "/" not in sidecar.json()["file"]  # no server paths
    listed = requests.get(f"{server}/api/jobs", timeout=10).json()["jobs"]
    assert job["id"] in [j["id"] for j in listed]


def test_bad_input_is_a_4xx_with_a_message(server, tmp_path):
    url = f"{server}/api/jobs"
    melody = lambda data: {"files": {"melody": ("hum.wav", data)}, "data": {"prompt": "a song"}}  # noqa: E731
    cases = [
        ({"json": {"prompt": "   "}}, 400, "prompt is empty"),
        ({"json": {}}, 400, "prompt is empty"),
        ({"json": {"prompt": "x", "seconds": 30}}, 400, "at most 3"),
        ({"json": {"prompt": "x", "seconds": 0}}, 400, "at least 0.1"),
        ({"json": {"prompt": "x", "seconds": 1e-9}}, 400, "at least 0.1"),
        ({"json": {"prompt": "x", "seed": 10**400}}, 400, "seed"),
        ({"json": {"story": []}}, 400, "no segments"),
        ({"json": {"prompt": "x", "settings": {"semantic": {"top_k": 10**9}}}}, 400, "at most 4096"),
        ({"json": {"prompt": "x", "seconds": "long"}}, 400, "must be a number"),
        ({"json": {"prompt": "x", "temperature": 0.5}}, 400, "unknown field 'temperature'"),
        ({"json": {"prompt": "x", "settings": {"coarse": {"temp": 1}}}}, 400, "unknown setting 'temp'"),
        ({"json": {"prompt": "x", "settings": {"loud": {}}}}, 400, "unknown stage 'loud'"),
        ({"json": {"prompt": "x", "settings": {"fine": {"top_p": 2}}}}, 400, "top_p"),
        ({"json": {"prompt": "x", "num_candidates": 99}}, 400, "num_candidates"),
        ({"json": {"prompt": "x", "seed": 1.5}}, 400, "whole number"),
        ({"json": {"prompt": "x", "story": [{"text": "a", "seconds": 1}]}}, 400, "not both"),
        ({"json": {"story": [{"text": "a", "seconds": -1}]}}, 400, "at least 0.1 s"),
        ({"json": {"prompt": "x" * 5000}}, 400, "at most 2000"),
        ({"data": b'{"prompt": ', "headers": {"content-type": "application/json"}}, 400, "not valid JSON"),
        ({"data": b"[1, 2]", "headers": {"content-type": "application/json"}}, 400, "JSON object"),
        ({"data": b"a calm song", "headers": {"content-type": "text/plain"}}, 415, "multipart/form-data"),
        (melody(b"RIFF\x00\x00not a wave file at all" * 20), 400, "cannot read hum.wav as audio"),
        (melody(wav_bytes(np.zeros(SR))), 400, "silent"),
        ({"files": {"melody": ("notes.txt", b"la la la\n" * 50)}, "data": {"prompt": "x"}}, 400, "notes.txt"),
        (melody(wav_bytes(np.random.default_rng(0).uniform(-1, 1, 20 * SR))), 413, "upload limit"),
        (melody(wav_bytes(tune(6.0))), 413, "at most 5 s"),  # checked before decoding
        ({"json": {"prompt": "x"}, "headers": {"origin": "http://evil.example"}}, 403, "evil.example"),
        ({"files": {"drums": ("d.wav", wav_bytes(tune()))}, "data": {"prompt": "x"}}, 400, "unknown upload 'drums'"),
        ({"json": {"prompt": "x", "melody": "/etc/passwd"}}, 400, "uploaded audio file"),
    ]
    for kwargs, status, message in cases:
        r = requests.post(url, timeout=30, **kwargs)
        assert r.status_code == status, (kwargs.get("json"), r.text)
        error = r.json()["error"]
        assert message in error and "Traceback" not in error and str(tmp_path.parent) not in error, error
    for path, status in [("/api/jobs/nope", 404), ("/api/jobs/nope/audio.wav", 404), ("/api/nothing", 404)]:
        r = requests.get(server + path, timeout=10)
        assert r.status_code == status and r.json()["error"], r.text
    # a page on another domain rebound to 127.0.0.1 sends its own Host: not answered
    assert requests.get(f"{server}/api/jobs", headers={"host": "evil.example"}, timeout=10).status_code == 400


def test_two_at_once_and_a_full_queue(server, studio):
    studio.pause()
    try:
        answers = []
        threads = [
            threading.Thread(
                target=lambda text: answers.append(
                    requests.post(f"{server}/api/jobs", json={"prompt": text, "seed": 1}, timeout=30)
                ),
                args=(text,),
            )
            for text in ("an epic orchestral trailer", "solo acoustic guitar by a campfire")
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(a.status_code for a in answers) == [202, 202], [a.text for a in answers]
        assert sorted(a.json()["position"] for a in answers) == [1, 2]
        full = requests.post(f"{server}/api/jobs", json={"prompt": "one too many"}, timeout=30)
        assert full.status_code == 503 and "queue is full" in full.json()["error"]
        waiting = answers[0].json()
        early = requests.get(f"{server}{waiting['url']}/audio.wav", timeout=10)
        assert early.status_code == 409 and "queued" in early.json()["error"]
    finally:
        studio.resume()
    for a in answers:
        assert abs(audio_seconds(server, finished(server, a.json()["id"])) - SECONDS) < 1e-3


def test_story_with_a_hummed_tune_and_a_continuation(server):
    story = [{"text": "a calm piano intro", "seconds": 1.0}, {"text": "drums and bass join in", "seconds": 1.5}]
    r = requests.post(
        f"{server}/api/jobs",
        data={"story": json.dumps(story), "settings": json.dumps({"semantic": {"temperature": 0.9, "top_k": 8}})},
        files={"melody": ("my hum.wav", wav_bytes(tune()))},
        timeout=30,
    )
    assert r.status_code == 202, r.text
    assert r.json()["request"]["melody"] == "melody.wav"  # the server's path is not shown
    clip = 0.8
    c = requests.post(
        f"{server}/api/jobs",
        data={"prompt": "the same band keeps playing", "seconds": "1"},
        files={"continue_from": ("clip", wav_bytes(tune(clip)))},  # no extension: its bytes say WAV
        timeout=30,
    )
    assert c.status_code == 202, c.text
    job = finished(server, r.json()["id"])
    assert abs(audio_seconds(server, job) - 2.5) < 1e-3
    sidecar = requests.get(server + job["result"]["files"]["sidecar.json"], timeout=10).json()
    assert [s["text"] for s in sidecar["story"]] == [s["text"] for s in story] and sidecar["melody"]
    assert sidecar["settings"]["semantic"]["top_k"] == 8
    cont = finished(server, c.json()["id"])
    assert cont["result"]["seconds"] > 1.0 and abs(audio_seconds(server, cont) - cont["result"]["seconds"]) < 1e-3


def test_the_page_makes_music_in_chromium(server, tmp_path):
    """Types a prompt, clicks Generate, waits for the player; then hums into Chromium's test
    microphone (a beep), and the page sends the recording as the tune to follow."""
    browser = Browser(fake_microphone=True)
    try:
        browser.open(server + "/", "document.body.dataset.ready === '1'")
        jobs = "document.querySelectorAll('#results .job').length"
        before = browser.evaluate(jobs)
        browser.type("#prompt", "   ")
        browser.click("#generate")
        shown = browser.wait_for(
            "!document.getElementById('error').hidden && document.getElementById('error').textContent"
        )
        assert "prompt is empty" in shown
        browser.type("#prompt", "a dreamy synthwave track with a steady drum machine")
        browser.type("#seconds", "2")
        browser.click("#generate")
        browser.wait_for(f"{jobs} > {before} && document.getElementById('error').hidden")
        newest = "document.querySelector('#results .job')"
        assert "synthwave" in browser.evaluate(f"{newest}.querySelector('.title').textContent")
        duration = browser.wait_for(
            f"(() => {{ const a = {newest}.querySelector('audio'); return a && a.readyState >= 1 && a.duration; }})()",
            timeout=240,
        )
        assert abs(duration - 2.0) < 0.01
        assert browser.wait_for(
            f"(() => {{ const i = {newest}.querySelector('img'); return i.complete && i.naturalWidth; }})()"
        )
        assert "MuLan score" in browser.evaluate(f"{newest}.textContent")
        assert not browser.exceptions, browser.exceptions
        browser.click("#record")
        time.sleep(1.5)
        browser.click("#record")
        player = "document.getElementById('recorded')"
        recorded = f"!{player}.hidden && {player}.readyState >= 1 && {player}.duration"
        assert browser.wait_for(recorded, timeout=30) > 1.0
        browser.type("#prompt", "a kazoo choir plays my tune")
        browser.click("#generate")
        following = f"(() => {{ const j = {newest}; return j.textContent.includes('kazoo') && j.dataset.status; }})()"
        browser.wait_for(f"['done', 'failed'].includes({following})", timeout=240)
        assert "following a tune" in browser.evaluate(f"{newest}.textContent")
        assert browser.evaluate(f"{newest}.dataset.status") == "done", browser.evaluate(f"{newest}.textContent")
        shot = tmp_path / "serve_page.png"
        browser.screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        print(f"screenshot: {shot}")
    finally:
        browser.close()


def test_a_restarted_server_lists_earlier_results(served, tmp_path):
    first = Studio(served, str(tmp_path), max_seconds=3.0, default_seconds=SECONDS)
    done = first.submit({"prompt": "a short bell melody"})
    deadline = time.time() + 240
    while first.job(done.id).status in ("queued", "running") and time.time() < deadline:
        time.sleep(0.1)
    first.stop()
    assert first.job(done.id).status == "done"
    crashed = tmp_path / "20000101-000000-abcdef"  # a job the previous server was running when it died
    crashed.mkdir()
    record = {"id": crashed.name, "request": {"prompt": "lost"}, "created": 1.0, "status": "running"}
    (crashed / "job.json").write_text(json.dumps(record))
    again = Studio(served, str(tmp_path), max_seconds=3.0, default_seconds=SECONDS, start=False)
    jobs = {j.id: j for j in again.jobs()}
    assert jobs[done.id].status == "done" and os.path.isfile(again.result_file(jobs[done.id], "wav"))
    assert jobs[crashed.name].status == "interrupted" and "submit it again" in jobs[crashed.name].error


def test_cli_serves_a_pipeline_directory(model_dirs, tmp_path):
    run = tmp_path / "run"  # the layout `musiclm pipeline` writes, linked to the random models
    run.mkdir()
    names = {"soundstream_dir": "codec"}
    for key, directory in model_dirs.items():
        os.symlink(directory, run / names.get(key, key.removesuffix("_dir")))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = ["serve", f"--model_dir={run}", f"--port={port}", f"--output_dir={tmp_path / 'out'}"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "musiclm_jax.main", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(),
        cwd="/",
    )
    try:
        deadline = time.time() + 180
        info = None
        while info is None and time.time() < deadline and proc.poll() is None:
            try:
                info = requests.get(f"http://127.0.0.1:{port}/api/info", timeout=5).json()
            except requests.ConnectionError:
                time.sleep(0.5)
        assert info is not None, proc.stderr.read() if proc.poll() is not None else "no answer"
        assert info["source"] == "pipeline" and info["can_follow_melody"] and info["can_continue"]
        page = requests.get(f"http://127.0.0.1:{port}/", timeout=10)
        assert page.status_code == 200 and "<script>" in page.text
        assert not re.search(r"https?://", page.text), "the page must load nothing from elsewhere"
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert f"open http://localhost:{port}/" in out
    bad = musiclm("serve", f"--model_dir={tmp_path / 'out'}")
    assert bad.returncode == 2 and "neither a `musiclm pipeline` directory" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr
