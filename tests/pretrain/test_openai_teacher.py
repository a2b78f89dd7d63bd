"""The openai teacher against a real local HTTP server speaking /v1/chat/completions."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from clara.pretrain.openai_teacher import ChatClient, OpenAITeacher, TeacherError
from clara.pretrain.prompt_teachers import parse_list, parse_qa_pairs
from clara.pretrain.synth import SynthDoc, synthesize

DOC_TEXT = "Mara Kellen was born in Tarsin in 1975. She works as a glassblower. She founded Kellen Glass in 2001."
FACTS = "Sure! Here are the facts:\n1. Mara Kellen was born in Tarsin.\n2. Mara Kellen was born in 1975.\n" \
        "3. Mara Kellen works as a glassblower.\n4. Mara Kellen founded Kellen Glass in 2001."
SIMPLE = "Q: Where was Mara Kellen born?\nA: Tarsin\n\n**Q:** In which year was Mara Kellen born?\n**A:** 1975\n" \
         "Q: What does Mara Kellen work as? A: a glassblower\n"
SIMPLE_RETRY = "1. Question: What did Mara Kellen found in 2001?\nAnswer: Kellen Glass"
COMPLEX = "Q: Which glassblower born in Tarsin founded a firm?\nA: Mara Kellen"
PARA = "Here is the rewritten text:\nBorn in 1975 in Tarsin, Mara Kellen is a glassblower who set up Kellen Glass in 2001."


class FakeServer:
    """Canned replies by prompt; the first request of every 3rd conversation fails with 500 or 429."""

    def __init__(self, fail_every=3):
        self.requests, self.failures, self.auth = 0, 0, set()
        self.lock = threading.Lock()
        self.fail_every = fail_every
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.auth.add(self.headers.get("Authorization"))
                with outer.lock:
                    outer.requests += 1
                    n = outer.requests
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": "not found"})
                if outer.fail_every and n % outer.fail_every == 0:
                    outer.failures += 1
                    code = 429 if n % 2 else 500
                    return self._send(code, {"error": "busy"}, {"Retry-After": "0"} if code == 429 else {})
                return self._send(200, {"choices": [{"message": {"role": "assistant", "content": outer.reply(body)}}]})

            def _send(self, code, obj, headers=None):
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @staticmethod
    def reply(body):
        prompt = body["messages"][-1]["content"]
        if prompt.startswith("List every atomic fact"):
            return FACTS
        if prompt.startswith("Write one question"):
            return SIMPLE_RETRY if body["temperature"] > 0 else SIMPLE
        if prompt.startswith("Write "):
            return COMPLEX
        return PARA

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = FakeServer()
    yield s
    s.close()


def test_synth_through_http_with_retries_and_concurrency(server, tmp_path, monkeypatch):
    monkeypatch.setenv("CLARA_TEST_KEY", "sk-test")
    teacher = OpenAITeacher(server.url, "fake-model", api_key_env="CLARA_TEST_KEY", workers=3, backoff=0.01, timeout=5)
    docs = [SynthDoc(f"d{i}", "Mara Kellen", DOC_TEXT) for i in range(6)]
    out = tmp_path / "o.jsonl"
    s = synthesize(docs, teacher, out)
    assert s["kept"] == 6 and s["errors"] == 0 and s["mean_coverage_kept"] == 1.0
    assert server.failures > 0 and teacher.client.retries == server.failures  # every failure was retried
    assert server.auth == {"Bearer sk-test"}
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    qa = rows[0]
    answers = [p["answer"] for p in qa["pairs"]]
    assert {"Tarsin", "1975", "a glassblower", "Kellen Glass", "Mara Kellen"} <= set(answers)
    assert qa["synth"]["rounds"] == 1  # the founding fact needed one regeneration round
    assert rows[1]["paraphrase"].startswith("Born in 1975")  # the preamble is stripped


def test_client_gives_up_with_one_line_error(tmp_path):
    always = FakeServer(fail_every=1)
    try:
        client = ChatClient(always.url, "m", max_retries=2, backoff=0.01)
        with pytest.raises(TeacherError, match="failed after 3 attempts"):
            client.chat([{"role": "user", "content": "hi"}])
        assert always.requests == 3
        bad = ChatClient(always.url.replace("/v1", "/nope"), "m", max_retries=3, backoff=0.01)
        with pytest.raises(TeacherError, match="HTTP 404"):  # not retried
            bad.chat([{"role": "user", "content": "hi"}])
    finally:
        always.close()
    dead = ChatClient(always.url, "m", max_retries=1, backoff=0.01, timeout=1)
    with pytest.raises(TeacherError, match="is the server up"):
        dead.chat([{"role": "user", "content": "hi"}])


def test_unreachable_server_leaves_documents_for_the_next_run(server, tmp_path):
    url = server.url
    server.close()
    teacher = OpenAITeacher(url, "m", workers=2, max_retries=0, backoff=0.01, timeout=1)
    docs = [SynthDoc(f"d{i}", "T", DOC_TEXT) for i in range(3)]
    s = synthesize(docs, teacher, tmp_path / "o.jsonl")
    assert s["errors"] == 3 and s["kept"] == 0 and s["dropped"] == 0  # not marked done


def test_parsers_are_robust():
    assert parse_list(FACTS)[0] == "Mara Kellen was born in Tarsin."
    assert len(parse_list(FACTS)) == 4
    pairs = parse_qa_pairs(SIMPLE + "\n" + SIMPLE_RETRY + "\nQ: dangling question?\n")
    assert [p.answer for p in pairs] == ["Tarsin", "1975", "a glassblower", "Kellen Glass"]
