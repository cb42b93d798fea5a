"""One way to name a learned library, and the Python API on a shared database: learn against the fake
server into a SQLite run (``tfgrpo.learn(db=, run_id=)``, quietly), then give that run's E to a user's
``create_agent`` through ``ExperienceMiddleware(run=..., db=...)`` and see it in the system prompt the
server receives."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from langchain.agents import create_agent
from langchain_core.messages import HumanMessage
from langchain_openai import ChatOpenAI
from langgraph.store.memory import InMemoryStore

import tfgrpo
from tfgrpo import ExperienceMiddleware
from tfgrpo.api import experienced_agent, load_library
from tfgrpo.errors import ConfigError, TfgrpoWarning
from tfgrpo.runs.backends import open_backend
from tfgrpo.state.published import library_namespace, publish_library, published_library
from tfgrpo.testing.fake_openai import FakeOpenAIServer

pytestmark = pytest.mark.integration

ROWS = [{"question": f"Calculate {a} + {b}.", "answer": str(a + b)} for a, b in ((2, 3), (7, 5), (4, 9))]
SMALL = {"epochs": 1, "batch_size": 3, "group_size": 2}


def user_agent(server: FakeOpenAIServer, middleware: ExperienceMiddleware, **kw: object) -> object:
    model = ChatOpenAI(model="user-model", base_url=server.base_url, api_key="x", max_retries=0)  # type: ignore[arg-type]
    return create_agent(
        model, [], system_prompt="You are the user's assistant.", middleware=[middleware], **kw
    )


def system_prompt_sent(server: FakeOpenAIServer) -> str:
    first = server.requests[-1]["messages"][0]
    assert first["role"] == "system"
    return str(first["content"])


def test_learn_into_a_database_then_a_users_agent_gets_e_by_run_id(
    fake_server: FakeOpenAIServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = str(tmp_path / "team.sqlite")
    result = tfgrpo.learn(
        ROWS,
        model="openai:fake",
        base_url=fake_server.base_url,
        run_dir=tmp_path / "run",
        db=db,
        run_id="dapo-s0",
        verbose=False,
        progress=False,
        **SMALL,
    )
    assert capsys.readouterr().out == ""  # verbose=False: no tables, no notes
    items = result.library["items"]
    assert items, "the scripted learner always proposes experiences"
    # the run went to the database, under its run id (not the run directory's SQLite files)
    assert not (tmp_path / "run" / "store.sqlite").exists()
    with open_backend(db, local_dir=tmp_path, run_id="dapo-s0") as backend:
        assert published_library(backend.store, "dapo-s0") == result.library

    # the user's own create_agent, E named by the run id in that database
    agent = user_agent(fake_server, ExperienceMiddleware(run="dapo-s0", db=db))
    agent.invoke({"messages": [HumanMessage("Calculate 1 + 1.")]})  # type: ignore[attr-defined]
    system = system_prompt_sent(fake_server)
    assert system.startswith("You are the user's assistant.")
    assert all(f"[{item['id']}] {item['text']}" in system for item in items)

    # the same name everywhere: load_library and evaluate(library=RUN_ID, db=...)
    assert load_library("dapo-s0", db=db) == result.library
    report = tfgrpo.evaluate(
        ROWS[:2], library="dapo-s0", db=db, model="openai:fake", base_url=fake_server.base_url,
        k=1, eval_dir=tmp_path / "eval", verbose=False, progress=False,
    )  # fmt: skip
    assert capsys.readouterr().out == ""
    assert report["arms"]["library"]["runs_done"] == 2


def test_the_database_comes_from_the_environment_as_for_the_cli(
    fake_server: FakeOpenAIServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "env.sqlite"
    monkeypatch.setenv("TFGRPO_DATABASE_URL", str(db))
    result = tfgrpo.learn(
        ROWS, model="openai:fake", base_url=fake_server.base_url, run_dir=tmp_path / "r",
        run_id="from-env", verbose=False, progress=False, **SMALL,
    )  # fmt: skip
    assert db.exists() and not (tmp_path / "r" / "store.sqlite").exists()
    # ExperienceMiddleware(run=...) finds it through the same variable
    agent = user_agent(fake_server, ExperienceMiddleware(run="from-env"))
    agent.invoke({"messages": [HumanMessage("Hi")]})  # type: ignore[attr-defined]
    assert all(item["text"] in system_prompt_sent(fake_server) for item in result.library["items"])
    # ... and so does tfgrpo's own agent (experienced_agent)
    experienced_agent("from-env", model="openai:fake", base_url=fake_server.base_url).invoke("Hi")
    assert all(item["text"] in system_prompt_sent(fake_server) for item in result.library["items"])


def test_published_shape_in_a_file_and_in_the_agents_store(
    fake_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    library = {"version": 1, "items": [{"id": "G1", "text": "Carry the one.", "created_step": 0,
                                       "updated_step": 0}]}  # fmt: skip
    # a store item as the learn graph publishes it, saved to a file: accepted as it is
    published = tmp_path / "published.json"
    published.write_text(json.dumps({"step": 3, "library": library}))
    user_agent(fake_server, ExperienceMiddleware(published)).invoke(  # type: ignore[attr-defined]
        {"messages": [HumanMessage("Hi")]}
    )
    assert "[G1] Carry the one." in system_prompt_sent(fake_server)

    # a run id and no database: the agent's store, where a LangGraph server's learn runs publish E
    store = InMemoryStore()
    agent = user_agent(fake_server, ExperienceMiddleware(run="studio-run"), store=store)
    with pytest.warns(TfgrpoWarning, match="run 'studio-run': no step has finished"):
        agent.invoke({"messages": [HumanMessage("Hi")]})  # type: ignore[attr-defined]
    assert "[G1]" not in system_prompt_sent(fake_server)  # answered, without E
    publish_library(store, "studio-run", 0, library)  # type: ignore[arg-type]
    store.put(library_namespace("studio-run"), "unrelated", {"x": 1})
    agent.invoke({"messages": [HumanMessage("Hi")]})  # type: ignore[attr-defined]
    assert "[G1] Carry the one." in system_prompt_sent(fake_server)


def test_bad_names_are_one_line_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TFGRPO_DATABASE_URL", raising=False)
    with pytest.raises(ConfigError, match="no such database"):
        ExperienceMiddleware(run="x", db=str(tmp_path / "missing.sqlite"))
    assert not (tmp_path / "missing.sqlite").exists()
    with pytest.raises(ConfigError, match="a run id needs a database"):
        load_library("not-a-path-nor-run")
    with pytest.raises(ConfigError, match="give one of library=, run= or namespace="):
        ExperienceMiddleware(tmp_path, run="x")
    with pytest.raises(ConfigError, match="run id 'a/b'"):
        tfgrpo.learn(ROWS, model="openai:x", run_dir=tmp_path / "r", run_id="a/b")


def lessons(*texts: str) -> dict[str, object]:
    items = [{"id": f"G{i}", "text": t, "created_step": 0, "updated_step": 0} for i, t in enumerate(texts, 1)]
    return {"version": 1, "items": items}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def team_db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        return str(request.getfixturevalue("postgres_url"))
    return str(tmp_path / "team.sqlite")


def test_an_app_named_by_run_follows_the_run_as_it_learns(
    fake_server: FakeOpenAIServer, tmp_path: Path, team_db: str
) -> None:
    """``ExperienceMiddleware(run=RUN, db=URL)``, built before RUN's first step: it answers without E
    (warning once), then sends E as each step publishes it, a rollback included, as ``run=`` without a
    database and ``library=PATH`` always did (it read E once, at construction)."""
    with open_backend(team_db, local_dir=tmp_path, run_id="live") as backend:
        publish_library(backend.store, "other-run", 0, lessons("Not this run's."))  # type: ignore[arg-type]
        agent = user_agent(fake_server, ExperienceMiddleware(run="live", db=team_db))
        with pytest.warns(TfgrpoWarning, match="run 'live'.*no step has finished.*without E") as warned:
            for _ in range(2):
                agent.invoke({"messages": [HumanMessage("Hi")]})  # type: ignore[attr-defined]
        assert len(warned) == 1  # once, not per call
        assert system_prompt_sent(fake_server) == "You are the user's assistant."
        for step, library in enumerate(
            [lessons("Carry the one."), lessons("Carry the one.", "Check units.", "Reread.", "Estimate."),
             lessons("Carry the one.")]  # the last: a validation rollback
        ):  # fmt: skip
            publish_library(backend.store, "live", step, library)  # type: ignore[arg-type]
            agent.invoke({"messages": [HumanMessage("Hi")]})  # type: ignore[attr-defined]
            sent = system_prompt_sent(fake_server)
            assert sent.count("\n[G") == len(library["items"])  # type: ignore[arg-type]
            assert all(f"[{i['id']}] {i['text']}" in sent for i in library["items"])  # type: ignore[attr-defined,index]


def test_e_carries_its_provenance_and_another_model_is_warned_once(
    fake_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    """Lessons do not transfer across models for sure: E says which policy and learner made it, from
    which dataset, run and step; a user's agent on another model is told once."""
    db = str(tmp_path / "team.sqlite")
    tfgrpo.learn(ROWS, model="openai:fake", base_url=fake_server.base_url, run_dir=tmp_path / "run", db=db,
                 run_id="prov", verbose=False, progress=False, **SMALL)  # fmt: skip
    on_disk = json.loads((tmp_path / "run" / "library.json").read_text())["provenance"]
    assert on_disk["policy_model"] == on_disk["learner_model"] == "openai:fake"
    last = json.loads((tmp_path / "run" / "report.json").read_text())["steps"][-1]["step"]
    assert on_disk["run_id"] == "prov" and on_disk["step"] == last and on_disk["dataset_fingerprint"]
    assert on_disk["tfgrpo_version"]
    with open_backend(db, local_dir=tmp_path, run_id="prov") as backend:
        item = backend.store.get(library_namespace("prov"), "latest")
        assert item is not None and item.value["provenance"] == on_disk
    for middleware in (ExperienceMiddleware(run="prov", db=db), ExperienceMiddleware(tmp_path / "run")):
        agent = user_agent(fake_server, middleware)  # its model is "user-model"
        with pytest.warns(TfgrpoWarning, match="learned with openai:fake.*this agent's model is user-model"):
            for _ in range(2):
                agent.invoke({"messages": [HumanMessage("Hi")]})  # type: ignore[attr-defined]
