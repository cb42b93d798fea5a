"""Offline search over a user-given document collection (BM25), so search tasks run with no network.

A corpus is one or more JSONL files. Each line is either a document ``{"title", "text"}`` (optional
``id``) or a HotpotQA-style row whose ``context`` lists the question's paragraphs as
``[{"title", "sentences": [...]}]`` (the original ``[[title, [sentences]]]`` form works too). Paragraphs
from ``context`` rows are deduplicated by title (the first one wins); plain documents only when title and
text are both repeated, so several chunks of one page may share a title.

The BM25 index is built on first use and cached in-process per (files, sizes, mtimes): editing a file
rebuilds it. Importing this module imports neither ``langchain_community`` nor ``rank_bm25``.
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
import time
import unicodedata
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from tfgrpo.errors import ConfigError, DataError

if TYPE_CHECKING:
    from langchain_core.retrievers import BaseRetriever
    from langchain_core.tools import BaseTool

PathLike = str | os.PathLike[str]

SEARCH_DESCRIPTION = (
    "Search the offline document collection. Input: a short keyword query. "
    "Returns the top matching paragraphs with their titles."
)
OPEN_PAGE_DESCRIPTION = (
    "Open a document of the offline collection by its exact title (as shown in search results). "
    "Returns its full text."
)

# Very common English words: they carry no signal for BM25 and only add noise to question-style queries.
_STOPWORDS = """
    a about above after again against all am an and any are as at be because been before being below
    between both but by can could did do does doing down during each few for from further had has
    have having he her here hers herself him himself his how i if in into is it its itself just me
    more most my myself no nor not now of off on once only or other our ours ourselves out over own
    same she should so some such than that the their theirs them themselves then there these they
    this those through to too under until up very was we were what when where which while who whom
    why will with would you your yours yourself yourselves s t
"""
STOPWORDS = frozenset(_STOPWORDS.split())
_TOKEN = re.compile(r"[^\W_]+")
_COMBINING = re.compile(r"[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]")
_TRUNCATED = " [... truncated]"


def tokenize(text: str) -> list[str]:
    """Lowercase alphanumeric tokens, accents folded ("Beyoncé" -> "beyonce"), stopwords dropped."""
    folded = text.casefold()
    if not folded.isascii():
        folded = _COMBINING.sub("", unicodedata.normalize("NFKD", folded))
    return [tok for tok in _TOKEN.findall(folded) if tok not in STOPWORDS]


def _norm_title(title: str) -> str:
    return " ".join(title.casefold().split())


# ---------------------------------------------------------------------------------------------------
# Text budget helpers (shared with tfgrpo.tools.web)


def truncate(text: str, max_chars: int) -> str:
    """``text`` cut to at most ``max_chars`` characters (marker included), preferably at a space."""
    if len(text) <= max_chars:
        return text
    if max_chars <= len(_TRUNCATED):
        return text[:max_chars]
    keep = max_chars - len(_TRUNCATED)
    cut = text[:keep]
    space = cut.rfind(" ")
    if space > keep * 0.8:
        cut = cut[:space]
    return cut.rstrip() + _TRUNCATED


def fit_blocks(blocks: Sequence[tuple[str, str]], max_chars: int, sep: str = "\n\n") -> str:
    """Join ``header + body`` blocks within ``max_chars`` characters in all.

    Headers (titles, URLs) are kept whole; when the bodies do not fit, the budget is shared fairly
    (short bodies stay whole, long ones are cut to an equal share) so that every result stays visible.
    """
    full = sep.join(head + body for head, body in blocks)
    if len(full) <= max_chars:
        return full
    fixed = sum(len(head) for head, _ in blocks) + len(sep) * (len(blocks) - 1)
    budget = max_chars - fixed
    if budget < 4 * len(_TRUNCATED) * len(blocks):  # too many results for this budget: plain cut
        return truncate(full, max_chars)
    order = sorted(range(len(blocks)), key=lambda i: len(blocks[i][1]))
    bodies = [body for _, body in blocks]
    for rank, i in enumerate(order):
        share = budget // (len(order) - rank)
        bodies[i] = truncate(bodies[i], share)
        budget -= len(bodies[i])
    return sep.join(head + body for (head, _), body in zip(blocks, bodies, strict=True))


# ---------------------------------------------------------------------------------------------------
# Loading


@dataclass(frozen=True, slots=True)
class Doc:
    """One paragraph of the collection; ``score`` is the BM25 score of a search hit (0.0 otherwise)."""

    title: str
    text: str
    score: float = 0.0
    id: str | None = None


def _as_paths(paths: PathLike | Iterable[PathLike]) -> list[Path]:
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    out = [Path(p).expanduser() for p in paths]
    if not out:
        raise ConfigError("no corpus file given")
    return out


def _field(row: dict[str, Any], name: str, where: str) -> str:
    if name not in row:
        raise DataError(f"{where}: missing field {name!r}")
    value = row[name]
    if not isinstance(value, str):
        raise DataError(f"{where}: field {name!r} must be a string, got {type(value).__name__}")
    return value


def _context_paragraphs(row: dict[str, Any], where: str) -> Iterator[tuple[str, str]]:
    context = row["context"]
    if not isinstance(context, list):
        raise DataError(f"{where}: field 'context' must be a list of {{'title', 'sentences'}} paragraphs")
    for j, para in enumerate(context):
        at = f"{where}: context[{j}]"
        if isinstance(para, list | tuple) and len(para) == 2:  # original HotpotQA: [title, [sentences]]
            para = {"title": para[0], "sentences": para[1]}
        if not isinstance(para, dict):
            raise DataError(f"{at} must be an object with 'title' and 'sentences'")
        title = _field(para, "title", at)
        if "sentences" not in para:
            raise DataError(f"{at}: missing field 'sentences'")
        sentences = para["sentences"]
        if not isinstance(sentences, list) or not all(isinstance(s, str) for s in sentences):
            raise DataError(f"{at}: field 'sentences' must be a list of strings")
        yield title, "".join(sentences).strip()


def read_corpus(paths: PathLike | Iterable[PathLike]) -> list[Doc]:
    """Read and deduplicate the documents of one or more corpus files (see the module docstring)."""
    docs: list[Doc] = []
    titles: set[str] = set()
    seen: set[tuple[str, str]] = set()
    for path in _as_paths(paths):
        if not path.is_file():
            raise DataError(f"corpus file not found: {path}")
        try:
            handle = path.open(encoding="utf-8")
        except OSError as exc:
            raise DataError(f"cannot read corpus file {path}: {exc.strerror or exc}") from None
        with handle:
            try:
                for lineno, line in enumerate(handle, 1):
                    if not line.strip():
                        continue
                    where = f"{path}:{lineno}"
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise DataError(f"{where}: not valid JSON ({exc.msg})") from None
                    if not isinstance(row, dict):
                        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
                    if "context" in row:
                        pairs = list(_context_paragraphs(row, where))
                        for title, text in pairs:
                            if title.strip() and title not in titles:
                                titles.add(title)
                                seen.add((title, text))
                                docs.append(Doc(title=title, text=text))
                        continue
                    if "title" not in row and "text" not in row:
                        raise DataError(
                            f"{where}: expected 'title' and 'text' (or a HotpotQA-style 'context' list)"
                        )
                    title, text = _field(row, "title", where), _field(row, "text", where)
                    doc_id = row.get("id")
                    if (title, text) in seen:
                        continue
                    titles.add(title)
                    seen.add((title, text))
                    docs.append(Doc(title=title, text=text, id=None if doc_id is None else str(doc_id)))
            except UnicodeDecodeError:
                raise DataError(f"{path}: not UTF-8 text") from None
    if not docs:
        raise DataError(f"corpus has no documents: {', '.join(str(p) for p in _as_paths(paths))}")
    return docs


# ---------------------------------------------------------------------------------------------------
# Index


def _bm25(docs: Sequence[Doc]) -> Any:
    """A ``rank_bm25.BM25Okapi`` over title + text, with Lucene's never-negative idf.

    rank_bm25's own idf is negative for a term in more than half the documents (then floored to a
    fraction of the mean idf, itself negative in a small collection), which ranks matches below misses.
    """
    try:
        from rank_bm25 import BM25Okapi
    except ImportError:
        raise ConfigError("corpus search needs rank-bm25 (pip install rank-bm25)") from None

    class LuceneIdfBM25(BM25Okapi):
        def _calc_idf(self, nd: dict[str, int]) -> None:
            n = self.corpus_size
            self.idf = {word: math.log(1 + (n - freq + 0.5) / (freq + 0.5)) for word, freq in nd.items()}

    return LuceneIdfBM25([tokenize(f"{d.title}\n{d.text}") for d in docs])


def _retriever(docs: Sequence[Doc], bm25: Any, k: int) -> BaseRetriever | None:
    """LangChain's ``BM25Retriever`` over the same BM25 model (None without langchain-community)."""
    try:
        with warnings.catch_warnings():  # the package announces its own sunset on import
            warnings.simplefilter("ignore", DeprecationWarning)
            from langchain_community.retrievers.bm25 import BM25Retriever
        from langchain_core.documents import Document
    except ImportError:
        return None
    documents = [
        Document(page_content=d.text, metadata={"title": d.title, **({"id": d.id} if d.id else {})})
        for d in docs
    ]
    return BM25Retriever(vectorizer=bm25, docs=documents, preprocess_func=tokenize, k=k)


class CorpusIndex:
    """A BM25 index over a document collection. Use :meth:`load` (cached) to build one from files."""

    def __init__(self, docs: Sequence[Doc], paths: Sequence[Path] = ()) -> None:
        if not docs:
            raise DataError("corpus has no documents")
        started = time.perf_counter()
        self.docs: tuple[Doc, ...] = tuple(docs)
        self.paths: tuple[Path, ...] = tuple(paths)
        self._by_title: dict[str, Doc] = {}
        self._by_norm_title: dict[str, Doc] = {}
        for doc in self.docs:
            self._by_title.setdefault(doc.title, doc)
            self._by_norm_title.setdefault(_norm_title(doc.title), doc)
        self._bm25 = _bm25(self.docs)
        self.build_seconds = time.perf_counter() - started

    def __len__(self) -> int:
        return len(self.docs)

    def __repr__(self) -> str:
        return f"CorpusIndex({len(self.docs)} docs from {[str(p) for p in self.paths]})"

    @classmethod
    def load(cls, paths: PathLike | Iterable[PathLike]) -> CorpusIndex:
        """The index of these corpus files, built on first use and cached while the files are unchanged."""
        files = _as_paths(paths)
        key: list[tuple[str, int, int]] = []
        for path in files:
            try:
                stat = path.stat()
            except OSError:
                raise DataError(f"corpus file not found: {path}") from None
            key.append((str(path.resolve()), stat.st_mtime_ns, stat.st_size))
        cache_key = tuple(key)
        with _CACHE_LOCK:
            index = _CACHE.get(cache_key)
            if index is None:
                started = time.perf_counter()
                docs = read_corpus(files)
                index = cls(docs, files)
                index.build_seconds = time.perf_counter() - started  # reading + indexing
                _CACHE[cache_key] = index
                while len(_CACHE) > _CACHE_SIZE:
                    _CACHE.popitem(last=False)
            else:
                _CACHE.move_to_end(cache_key)
            return index

    def search(self, query: str, k: int = 5) -> list[Doc]:
        """The ``k`` best BM25 matches for ``query`` (best first; documents sharing no term are left out)."""
        tokens = tokenize(query)
        if not tokens or k <= 0:
            return []
        import numpy as np  # a dependency of rank_bm25

        scores = self._bm25.get_scores(tokens)
        order = np.argsort(-scores, kind="stable")[:k]
        return [replace(self.docs[i], score=float(scores[i])) for i in order if scores[i] > 0]

    def get(self, title: str) -> Doc | None:
        """The document with exactly this title (else the same title up to case and spacing), or None."""
        return self._by_title.get(title) or self._by_norm_title.get(_norm_title(title))

    def as_retriever(self, k: int = 5) -> BaseRetriever:
        """This index as a LangChain ``BM25Retriever`` returning ``k`` documents (needs langchain-community).

        The tools do not use it: it gives no scores. It shares this index's BM25 model.
        """
        retriever = _retriever(self.docs, self._bm25, k)
        if retriever is None:
            raise ConfigError("as_retriever needs langchain-community (pip install 'tfgrpo[community]')")
        return retriever


_CACHE: OrderedDict[tuple[tuple[str, int, int], ...], CorpusIndex] = OrderedDict()
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 4


def clear_cache() -> None:
    """Forget every cached index (tests, or to free memory)."""
    with _CACHE_LOCK:
        _CACHE.clear()


# ---------------------------------------------------------------------------------------------------
# Tools


class _SearchInput(BaseModel):
    query: str = Field(description="A short keyword query, e.g. names and distinctive words.")


class _OpenPageInput(BaseModel):
    title: str = Field(description="The exact title of a document, as shown in the search results.")


def _check_limits(k: int, max_chars: int) -> None:
    if k < 1:
        raise ConfigError(f"corpus search k must be at least 1, got {k}")
    if max_chars < 100:
        raise ConfigError(f"tool max_chars must be at least 100, got {max_chars}")


def format_results(docs: Sequence[Doc], max_chars: int) -> str:
    """Numbered ``[i] title`` + paragraph blocks, within ``max_chars`` characters in all."""
    return fit_blocks([(f"[{i}] {d.title}\n", d.text) for i, d in enumerate(docs, 1)], max_chars)


def corpus_search_tool(
    paths: PathLike | Iterable[PathLike], k: int = 5, max_chars: int = 2000, name: str = "search"
) -> BaseTool:
    """A ``search`` tool over the corpus files. The index is built at the first call, not here.

    A missing or malformed corpus file raises :class:`DataError` from the call (a setup error the run
    should stop on, not something the agent can fix).
    """
    from langchain_core.tools import StructuredTool

    files = _as_paths(paths)
    _check_limits(k, max_chars)

    def search(query: str) -> str:
        if not query.strip():
            return "Empty query: give a few keywords."
        docs = CorpusIndex.load(files).search(query, k=k)
        if not docs:
            return f"No results for {query!r}. Try other keywords."
        return format_results(docs, max_chars)

    return StructuredTool.from_function(
        func=search, name=name, description=SEARCH_DESCRIPTION, args_schema=_SearchInput
    )


def corpus_lookup_tool(
    paths: PathLike | Iterable[PathLike], max_chars: int = 2000, name: str = "open_page"
) -> BaseTool:
    """An ``open_page`` tool returning the full paragraph with a given title (built lazily, like search)."""
    from langchain_core.tools import StructuredTool

    files = _as_paths(paths)
    _check_limits(1, max_chars)

    def open_page(title: str) -> str:
        index = CorpusIndex.load(files)
        doc = index.get(title.strip())
        if doc is None:
            near = [d.title for d in index.search(title, k=3)]
            hint = f" Closest titles: {'; '.join(near)}." if near else " Use search to find titles."
            return truncate(f"No document titled {title!r}.{hint}", max_chars)
        return truncate(f"{doc.title}\n{doc.text}", max_chars)

    return StructuredTool.from_function(
        func=open_page, name=name, description=OPEN_PAGE_DESCRIPTION, args_schema=_OpenPageInput
    )
