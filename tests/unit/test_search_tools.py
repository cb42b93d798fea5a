"""Offline corpus search (BM25) and the Tavily web tools against a loopback stub server."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tfgrpo.errors import ConfigError, DataError
from tfgrpo.tools import corpus, web
from tfgrpo.tools.corpus import CorpusIndex, corpus_lookup_tool, corpus_search_tool, fit_blocks, truncate
from tfgrpo.tools.web import web_search_available, web_tools

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
NO_SHARED_DATA = "../shared/data not present (benchmark data lives outside the repository)"

_PARAGRAPHS = {
    "Eyjafjallajökull": "An Icelandic volcano whose 2010 eruption grounded flights in Europe.",
    "Python (programming language)": "A high-level programming language by Guido van Rossum.",
    "Ball python": "A python species native to West and Central Africa, a popular pet snake.",
    "Tulsa, Oklahoma": "The second-largest city in the state of Oklahoma, on the Arkansas River.",
    "Photosynthesis": "The process by which plants turn light, water and carbon dioxide into sugar.",
    "Marie Curie": "A physicist and chemist who won Nobel Prizes in physics and chemistry.",
}
DOCS = [{"title": title, "text": text} for title, text in _PARAGRAPHS.items()]


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    corpus.clear_cache()
    yield
    corpus.clear_cache()


@pytest.fixture
def docs_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "docs.jsonl", DOCS)


# ---------------------------------------------------------------------------------------------------
# Corpus search


def test_search_ranks_the_distinctive_document_first(docs_file: Path) -> None:
    index = CorpusIndex.load([docs_file])
    assert len(index) == len(DOCS)
    hits = index.search("volcano eruption that grounded European flights", k=3)
    assert hits[0].title == "Eyjafjallajökull"
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert all(h.score > 0 for h in hits)
    assert index.search("eyjafjallajokull")[0].title == "Eyjafjallajökull"  # accents folded
    assert index.search("snake pet Africa")[0].title == "Ball python"
    assert index.search("programming language")[0].title == "Python (programming language)"


def test_search_leaves_out_unrelated_and_stopword_queries(docs_file: Path) -> None:
    index = CorpusIndex.load(str(docs_file))  # a single path works too
    assert index.search("zebra xylophone") == []
    assert index.search("what is the") == []
    assert len(index.search("python", k=1)) == 1


def test_load_is_cached_until_a_file_changes(docs_file: Path) -> None:
    first = CorpusIndex.load([docs_file])
    assert CorpusIndex.load([docs_file]) is first
    write_jsonl(docs_file, [*DOCS, {"title": "Zebra", "text": "A striped African horse."}])
    stat = docs_file.stat()
    os.utime(docs_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    second = CorpusIndex.load([docs_file])
    assert second is not first
    assert second.search("striped horse")[0].title == "Zebra"


def test_search_tool_returns_titled_paragraphs(docs_file: Path) -> None:
    tool = corpus_search_tool([docs_file], k=2)
    assert tool.name == "search"
    assert tool.description == (
        "Search the offline document collection. Input: a short keyword query. "
        "Returns the top matching paragraphs with their titles."
    )
    assert set(tool.args) == {"query"}
    out = tool.invoke({"query": "Tulsa Oklahoma city"})
    assert out.startswith("[1] Tulsa, Oklahoma\nThe second-largest city")
    assert "[3]" not in out
    assert "No results" in tool.invoke({"query": "zebra xylophone"})


def test_search_tool_output_is_truncated_but_keeps_every_title(tmp_path: Path) -> None:
    rows = [{"title": f"Doc {i}", "text": f"needle {'filler words ' * 100}{i}"} for i in range(5)]
    path = write_jsonl(tmp_path / "long.jsonl", rows)
    out = corpus_search_tool([path], k=5, max_chars=600).invoke({"query": "needle"})
    assert len(out) <= 600
    assert all(f"Doc {i}" in out for i in range(5))
    assert "[... truncated]" in out
    full = corpus_search_tool([path], k=5, max_chars=100_000).invoke({"query": "needle"})
    assert "[... truncated]" not in full and len(full) > 5 * 1000


def test_truncation_helpers_respect_the_limit() -> None:
    text = "word " * 1000
    for limit in (5, 20, 100, 999):
        assert len(truncate(text, limit)) <= limit
    assert truncate("short", 100) == "short"
    blocks = [("[1] A\n", "x" * 50), ("[2] B\n", "y" * 5000), ("[3] C\n", "z" * 5000)]
    out = fit_blocks(blocks, 1000)
    assert len(out) <= 1000
    assert "x" * 50 in out  # the short one stays whole; the long ones share the rest
    assert out.count("y") > 300 and out.count("z") > 300


def test_open_page_returns_the_paragraph_for_a_title(docs_file: Path) -> None:
    tool = corpus_lookup_tool([docs_file], max_chars=2000)
    assert tool.name == "open_page"
    assert set(tool.args) == {"title"}
    out = tool.invoke({"title": "Marie Curie"})
    assert out == "Marie Curie\nA physicist and chemist who won Nobel Prizes in physics and chemistry."
    assert tool.invoke({"title": "  marie   CURIE "}).startswith("Marie Curie\n")  # case and spacing
    missing = tool.invoke({"title": "Curie"})
    assert missing.startswith("No document titled 'Curie'.") and "Marie Curie" in missing
    long_file = write_jsonl(docs_file.with_name("long.jsonl"), [{"title": "Long", "text": "word " * 500}])
    short = corpus_lookup_tool([long_file], max_chars=100).invoke({"title": "Long"})
    assert len(short) <= 100 and short.startswith("Long\nword word") and short.endswith("[... truncated]")
    index = CorpusIndex.load([docs_file])
    doc = index.get("Ball python")
    assert doc is not None and doc.text.startswith("A python species")
    assert index.get("Nope") is None


def test_tools_are_lazy_and_report_a_missing_corpus_when_called(tmp_path: Path) -> None:
    tool = corpus_search_tool([tmp_path / "later.jsonl"])  # no file yet: nothing is read here
    with pytest.raises(DataError, match="corpus file not found"):
        tool.invoke({"query": "anything"})
    write_jsonl(tmp_path / "later.jsonl", DOCS)
    assert tool.invoke({"query": "photosynthesis plants"}).startswith("[1] Photosynthesis")
    with pytest.raises(ConfigError):
        corpus_search_tool([tmp_path / "later.jsonl"], k=0)
    with pytest.raises(ConfigError):
        corpus_lookup_tool([tmp_path / "later.jsonl"], max_chars=10)


def test_hotpotqa_rows_become_a_deduplicated_corpus(tmp_path: Path, docs_file: Path) -> None:
    shared = {
        "title": "Tinted Windows (band)",
        "sentences": ["Tinted Windows was a supergroup.", " From NYC."],
    }
    rows = [
        {
            "id": "q1",
            "question": "?",
            "answer": "x",
            "context": [shared, {"title": "A", "sentences": ["a1"]}],
        },
        {
            "id": "q2",
            "question": "?",
            "answer": "y",
            "context": [{"title": "B", "sentences": ["b1"]}, shared],
        },
        {"id": "q3", "question": "?", "answer": "z", "context": [["C", ["c1 ", "c2"]]]},  # original form
    ]
    hotpot = write_jsonl(tmp_path / "hotpot.jsonl", rows)
    index = CorpusIndex.load([hotpot])
    assert sorted(d.title for d in index.docs) == ["A", "B", "C", "Tinted Windows (band)"]
    band = index.get("Tinted Windows (band)")
    assert band is not None and band.text == "Tinted Windows was a supergroup. From NYC."
    assert index.search("supergroup")[0].title == "Tinted Windows (band)"
    both = CorpusIndex.load([docs_file, hotpot])  # several files, both formats
    assert len(both) == len(DOCS) + 4


def test_as_retriever_gives_langchain_documents(docs_file: Path) -> None:
    pytest.importorskip("langchain_community")
    found = CorpusIndex.load([docs_file]).as_retriever(k=2).invoke("volcano Iceland")
    assert len(found) == 2 and found[0].metadata["title"] == "Eyjafjallajökull"


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"title": "A", "text": "a"}', "{not json"], r":2: not valid JSON"),
        (['{"title": "A", "text": "a"}', "", '{"title": "B"}'], r":3: missing field 'text'"),
        (['{"text": "no title"}'], r":1: missing field 'title'"),
        (['{"title": "A", "text": 3}'], r":1: field 'text' must be a string"),
        (['{"question": "q"}'], r":1: expected 'title' and 'text' \(or a HotpotQA-style 'context' list\)"),
        (["[1, 2]"], r":1: expected a JSON object"),
        (['{"context": [{"title": "A"}]}'], r":1: context\[0\]: missing field 'sentences'"),
        (['{"context": "A"}'], r":1: field 'context' must be a list"),
        (["", "  "], r"corpus has no documents"),
    ],
)
def test_bad_corpus_files_give_one_line_errors(tmp_path: Path, lines: list[str], message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=message) as caught:
        CorpusIndex.load([path])
    assert str(path) in str(caught.value)
    assert "\n" not in str(caught.value)


def test_missing_corpus_file_is_named(tmp_path: Path, docs_file: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(DataError, match="corpus file not found") as caught:
        CorpusIndex.load([docs_file, missing])
    assert str(missing) in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.skipif(not (SHARED_DATA / "hotpotqa_distractor_eval300.jsonl").is_file(), reason=NO_SHARED_DATA)
def test_hotpotqa_questions_find_their_supporting_paragraphs() -> None:
    path = SHARED_DATA / "hotpotqa_distractor_eval300.jsonl"
    index = CorpusIndex.load([path])
    assert len(index) > 2500  # ~10 paragraphs per question, a few shared
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()[:20]]
    hits = 0
    for row in rows:
        found = {d.title for d in index.search(row["question"], k=5)}
        hits += bool(found & {fact["title"] for fact in row["supporting_facts"]})
    recall = hits / len(rows)
    assert recall >= 0.8, f"top-5 supporting-title recall {recall:.2f}"  # measured 0.95 (0.96 on all 300)


# ---------------------------------------------------------------------------------------------------
# Web search (Tavily) against a loopback stub


FAKE_KEY = "tvly-fake-SECRET-0123456789"


class _TavilyStub(BaseHTTPRequestHandler):
    calls: list[dict[str, Any]] = []

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _reply(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
            self.wfile.write(data)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        auth = self.headers.get("Authorization", "")
        self.calls.append({"path": self.path, "body": body, "auth": auth})
        if auth != f"Bearer {FAKE_KEY}" or body.get("query") == "bad key":
            # A server echoing the key back: the tool must not pass it on.
            self._reply(401, {"detail": {"error": f"Unauthorized: invalid API key {auth[7:]}"}})
        elif self.path == "/search":
            query = body["query"]
            if query == "boom":
                self._reply(500, {"detail": {"error": "internal"}})
                return
            if query == "slow":
                time.sleep(1.5)
            lorem = "lorem " * 80
            results = [
                {
                    "title": f"Result {i} for {query}",
                    "url": f"https://example.org/{i}",
                    "content": (f"key {FAKE_KEY} " if query == "echo" else "") + f"Snippet {i} {lorem}",
                    "score": 1 / i,
                    "raw_content": None,
                }
                for i in range(1, body.get("max_results", 5) + 1)
            ]
            self._reply(200, {"query": query, "answer": None, "images": [], "results": results})
        elif self.path == "/extract":
            url = body["urls"][0]
            if "boom" in url:
                self._reply(500, {"detail": {"error": "internal"}})
            elif "fail" in url:
                self._reply(200, {"results": [], "failed_results": [{"url": url, "error": "Page blocked"}]})
            else:
                page = {"url": url, "raw_content": "Page text. " * 500, "images": []}
                self._reply(200, {"results": [page], "failed_results": [], "response_time": 0.1})
        else:
            self._reply(404, {"detail": {"error": "not found"}})


@pytest.fixture
def tavily_stub(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    for name in ("http_proxy", "https_proxy", "all_proxy", "TAVILY_HTTP_PROXY", "TAVILY_HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.delenv("TAVILY_API_BASE_URL", raising=False)
    monkeypatch.setenv("TAVILY_API_KEY", FAKE_KEY)
    _TavilyStub.calls = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _TavilyStub)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _tools(base_url: str, **kwargs: Any) -> dict[str, Any]:
    return {t.name: t for t in web_tools(api_base_url=base_url, **kwargs)}


def test_web_search_returns_the_stub_results(tavily_stub: str) -> None:
    assert web_search_available()
    tools = _tools(tavily_stub, max_chars=1500, max_results=3)
    assert set(tools) == {"web_search", "web_extract"}
    out = tools["web_search"].invoke({"query": "tinted windows band"})
    assert out.startswith("[1] Result 1 for tinted windows band\nURL: https://example.org/1\nSnippet 1")
    assert "[3] Result 3" in out and "[4]" not in out
    assert len(out) <= 1500 and "[... truncated]" in out
    assert _TavilyStub.calls[-1]["path"] == "/search"
    assert _TavilyStub.calls[-1]["body"]["max_results"] == 3
    assert FAKE_KEY not in out


def test_web_extract_returns_page_text(tavily_stub: str) -> None:
    tool = _tools(tavily_stub, max_chars=500)["web_extract"]
    out = tool.invoke({"url": "https://example.org/page"})
    assert out.startswith("https://example.org/page\nPage text. Page text.")
    assert len(out) <= 500
    assert tool.invoke({"url": "https://example.org/fail"}) == (
        "error: could not extract https://example.org/fail: Page blocked"
    )
    assert tool.invoke({"url": "example.org"}).startswith("error: not a web address")
    assert _TavilyStub.calls[0]["body"]["urls"] == ["https://example.org/page"]


def test_web_errors_come_back_as_text_without_the_key(tavily_stub: str) -> None:
    tools = _tools(tavily_stub, timeout=0.5)
    boom = tools["web_search"].invoke({"query": "boom"})
    assert boom.startswith("error: web_search failed: HTTPError: 500 Server Error")
    extract = tools["web_extract"].invoke({"url": "https://boom.example"})
    assert extract.startswith("error: web_extract failed: HTTPError: 500 Server Error")
    slow = tools["web_search"].invoke({"query": "slow"})
    assert slow.startswith("error: web_search failed: TimeoutError") and "timed out" in slow
    refused = tools["web_search"].invoke({"query": "bad key"})
    assert refused.startswith("error: web_search failed: InvalidAPIKeyError") and "[redacted]" in refused
    echoed = tools["web_search"].invoke({"query": "echo"})
    assert echoed.startswith("[1] Result 1 for echo") and "[redacted]" in echoed
    for out in (boom, extract, slow, refused):
        assert "\n" not in out
    for out in (boom, extract, slow, refused, echoed):
        assert FAKE_KEY not in out


def test_unreachable_server_is_an_error_text(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAVILY_API_KEY", FAKE_KEY)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _TavilyStub)
    port = server.server_address[1]
    server.server_close()  # nothing listens on this port any more
    out = _tools(f"http://127.0.0.1:{port}", timeout=2)["web_search"].invoke({"query": "x"})
    assert out.startswith("error: web_search failed: ConnectionError") and FAKE_KEY not in out


def test_missing_key_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TAVILY_API_KEY", raising=False)
    assert not web_search_available()
    with pytest.raises(ConfigError, match="web search needs TAVILY_API_KEY"):
        web_tools()
    monkeypatch.setenv("TAVILY_API_KEY", "  ")
    assert not web_search_available()
    with pytest.raises(ConfigError):
        web_tools()
    monkeypatch.setenv("TAVILY_API_KEY", FAKE_KEY)
    with pytest.raises(ConfigError) as caught:
        web_tools(max_chars=5)
    assert FAKE_KEY not in str(caught.value)


def test_importing_the_tool_modules_loads_no_search_backend() -> None:
    repo = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if k != "TAVILY_API_KEY"}
    env["PYTHONPATH"] = str(repo) + os.pathsep + env.get("PYTHONPATH", "")
    code = (
        "import sys, tfgrpo.tools.web, tfgrpo.tools.corpus\n"
        "loaded = [m for m in ('tavily', 'langchain_tavily', 'langchain_community', 'rank_bm25') "
        "if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=repo, timeout=60)
    assert web.KEY_ENV == "TAVILY_API_KEY"
