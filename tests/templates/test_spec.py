"""Dockerfile subset and JSON build specs: what is accepted, and clear errors for the rest."""

from __future__ import annotations

from pathlib import Path

import pytest

from emberbox.templates.spec import BuildSpec, SpecError, Step, parse_dockerfile


def test_dockerfile_maps_onto_steps(tmp_path: Path):
    spec = parse_dockerfile(
        """
        # comment
        FROM base
        ENV A=1 B="two words"
        ENV C three
        RUN apt-get update && \\
            apt-get install -y jq
        RUN ["python3", "-c", "print('x y')"]
        WORKDIR app
        COPY --chown=user:user src/ ./src/
        USER user
        LABEL ignored=yes
        EXPOSE 8080
        CMD ["python3", "-m", "http.server", "8080"]
        HEALTHCHECK --interval=1s CMD curl -sf localhost:8080
        """,
        tmp_path,
    )
    assert spec.parent == "base"
    assert spec.steps == (
        Step("ENV", env=(("A", "1"), ("B", "two words"))),
        Step("ENV", env=(("C", "three"),)),
        Step("RUN", run="apt-get update &&  apt-get install -y jq"),
        Step("RUN", run="python3 -c 'print('\"'\"'x y'\"'\"')'"),
        Step("WORKDIR", dest="app"),
        Step("COPY", sources=("src",), dest="./src/", chown="user:user"),
        Step("USER", dest="user"),
    )
    assert spec.start_cmd == "python3 -m http.server 8080"
    assert spec.ready_cmd == "curl -sf localhost:8080"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("RUN echo hi", "before FROM"),
        ("FROM debian:12", "must name an Emberbox template"),
        ("FROM base\nADD x /x", "line 2: unsupported instruction ADD"),
        ("FROM base\nCOPY ../secret /x", "must stay inside the context"),
        ("FROM base\nCOPY /etc/passwd /x", "must stay inside the context"),
        ("FROM base\nCOPY onlyone", "needs a source and a destination"),
        ("FROM base\nENV =x", "KEY=VALUE"),
        ("FROM base\nHEALTHCHECK NONE", "HEALTHCHECK needs CMD"),
        ("FROM base\nFROM base", "only one FROM"),
        ("", "needs FROM"),
        ("FROM Bad/Name", "must name an Emberbox template"),
    ],
)
def test_bad_dockerfiles_name_the_problem(text: str, message: str, tmp_path: Path):
    with pytest.raises(SpecError, match=message):
        parse_dockerfile(text, tmp_path)


def test_json_spec_and_its_errors(tmp_path: Path):
    spec = BuildSpec.from_dict(
        {"from": "base", "steps": [{"run": "echo hi"}, {"env": {"K": "v"}},
                                   {"copy": {"src": "a.txt", "dest": "/a.txt"}},
                                   {"workdir": "/srv"}, {"user": "user"}],
         "start_cmd": "sleep infinity", "ready_cmd": "true"},
        tmp_path,
    )  # fmt: skip
    assert [s.kind for s in spec.steps] == ["RUN", "ENV", "COPY", "WORKDIR", "USER"]
    with pytest.raises(SpecError, match="needs 'from'"):
        BuildSpec.from_dict({"steps": []})
    with pytest.raises(SpecError, match=r"steps\[0\]: bad run step"):
        BuildSpec.from_dict({"from": "base", "steps": [{"run": ""}]})
    with pytest.raises(SpecError, match="COPY needs a context"):
        BuildSpec.from_dict({"from": "base", "steps": [{"copy": {"src": "a", "dest": "/a"}}]})
    with pytest.raises(SpecError, match="ready check needs a start command"):
        BuildSpec.from_dict({"from": "base", "ready_cmd": "true"})
