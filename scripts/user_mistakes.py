"""Try user mistakes on every subcommand and every kind of input, each in its own `fairbench` process, and
count the clean ones.

A mistake is clean when it ends with exit 2, one line on stderr, and nothing created or changed; a resume of
a damaged run may instead end with exit 0 and a run equal to the undamaged one. A few valid inputs that look
like mistakes are in the corpus too; they must end with exit 0.

    python scripts/user_mistakes.py                 # every case, two at a time
    python scripts/user_mistakes.py --only resume   # the cases whose name contains "resume"
    python scripts/user_mistakes.py --list          # each case's expected ending (2, 0 or repair) and name
    python scripts/user_mistakes.py --jobs 1 --out mistakes.tsv

It works in a temporary folder, removed at the end, and prints one line per case and the count.
"""
from __future__ import annotations

import argparse
import atexit
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
REPAIR = "repair"  # exit 2 (clean), or exit 0 with a run equal to the undamaged one

cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
cli.add_argument("--only", help="run only the cases whose name contains this text")
cli.add_argument("--jobs", type=int, default=2, help="cases run at a time (default 2)")
cli.add_argument("--out", help="also write the results as a TSV file")
cli.add_argument("--list", action="store_true", help="list the cases and stop")
opts = cli.parse_args()

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["FAIRBENCH_CACHE"] = tempfile.mkdtemp()
os.environ["OMP_NUM_THREADS"] = "1"  # two cases at a time on two cores
atexit.register(shutil.rmtree, os.environ["FAIRBENCH_CACHE"], True)
base = Path(tempfile.mkdtemp(prefix="fairbench-mistakes-"))
atexit.register(shutil.rmtree, base, True)
ENV = {**os.environ, "PYTHONPATH": str(REPO)}

RUN = ["run", "--n", "2", "--limit", "2", "--no-progress", "--n-boot", "20", "--dtype", "float32"]


def fairbench(*argv: str, cwd: Path = base) -> None:
    """Run a setup command; it must succeed."""
    p = subprocess.run([sys.executable, "-m", "fairbench", *argv], cwd=cwd, env=ENV, capture_output=True, text=True)
    assert p.returncode == 0, (argv, p.stderr[-2000:])


def setup() -> None:
    """The runs the cases start from: a run, its two shards, a smaller run, its reference, and a method's run
    compared with it."""
    print("setting up the runs the cases start from ...", flush=True)
    fairbench(*RUN, "--out", str(base / "run"))
    fairbench(*RUN, "--shard", "0/2", "--out", str(base / "s0"))
    fairbench(*RUN, "--shard", "1/2", "--out", str(base / "s1"))
    fairbench(*RUN, "--limit", "1", "--out", str(base / "other"))
    fairbench("reference", str(base / "run"), "--out", str(base / "ref.json"))
    fairbench(*RUN, "--method", "fairmap", "--method-arg", "steps=2", "--no-baseline", "--out", str(base / "fm"))
    fairbench("compare", str(base / "fm"), "--baseline", str(base / "run"))


@dataclass
class Case:
    name: str
    argv: Callable[[Path], list[str]]
    prep: Callable[[Path], None] | None = None
    want: int | str = 2


CASES: list[Case] = []


def case(name: str, argv: Callable[[Path], list[str]], prep: Callable[[Path], None] | None = None,
         want: int | str = 2) -> None:
    CASES.append(Case(name, argv, prep, want))


def write(p: Path, text: str | bytes) -> str:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(p)


def copy_run(src: str, dst: str = "r") -> Callable[[Path], Path]:
    """prep helper: copy a setup run into the case's folder (cases never touch the shared runs)."""
    def prep(t: Path) -> Path:
        shutil.copytree(base / src, t / dst, symlinks=True)
        return t / dst
    return prep


def snapshot(d: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for p in d.rglob("*"):
        try:
            st = p.lstat()
        except FileNotFoundError:
            continue
        # a folder counts by its existence: a lock file made and removed again changes its mtime only
        out[str(p)] = (0, 0) if p.is_dir() and not p.is_symlink() else (st.st_size, st.st_mtime_ns)
    return out


def run_digest(d: Path) -> str:
    """What two equal runs share: the manifest, every image's bytes and the labels."""
    h = hashlib.sha256()
    for name in ("manifest.jsonl", "labels.parquet"):
        h.update((d / name).read_bytes() if (d / name).is_file() else b"missing")
    for p in sorted((d / "images").rglob("*")):
        h.update(str(p.relative_to(d)).encode() + (p.read_bytes() if p.is_file() else b"dir"))
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# 1. flag values, every subcommand

BAD_INT = ["abc", "1.5", "", "nan", "99999999999999999999999"]
BAD_FLOAT = ["nan", "inf", "-inf", "abc", ""]
BAD_COUNT = ["-1", "0", "1000000000000"]
BAD_NAME = ["nope", "", "../../etc/passwd"]

for flag in ("--limit", "--n", "--seed", "--batch-size", "--steps", "--height", "--width", "--n-boot"):
    for v in BAD_INT:
        case(f"run {flag} {v!r}", lambda t, f=flag, v=v: [*RUN, f, v, "--out", str(t / "o")],
             want=0 if flag == "--limit" and v == "99999999999999999999999" else 2)
    for v in BAD_COUNT if flag != "--seed" else ["-1"]:
        # --limit is "at most N prompts": a limit above the suite's size is all of them
        case(f"run {flag} {v}", lambda t, f=flag, v=v: [*RUN, f, v, "--out", str(t / "o")],
             want=0 if flag == "--limit" and v == "1000000000000" else 2)
case("run --height 33 (the world draws one size)", lambda t: [*RUN, "--height", "33", "--out", str(t / "o")])
case("run --width 48 (the world draws one size)", lambda t: [*RUN, "--width", "48", "--out", str(t / "o")])
for flag in ("--guidance-scale", "--face-margin", "--low-confidence", "--ci-level"):
    for v in BAD_FLOAT:
        case(f"run {flag} {v!r}", lambda t, f=flag, v=v: [*RUN, f, v, "--out", str(t / "o")])
for flag, values in (("--ci-level", ["0", "1", "1.5", "-0.5"]), ("--low-confidence", ["-0.1", "1.5"]),
                     ("--face-margin", ["-1"]), ("--guidance-scale", ["1e400"])):
    for v in values:
        case(f"run {flag} {v}", lambda t, f=flag, v=v: [*RUN, f, v, "--out", str(t / "o")])
for flag in ("--method", "--model", "--suite", "--scheduler", "--classifier", "--detector", "--extractor",
             "--clip-model"):
    for v in BAD_NAME:
        case(f"run {flag} {v!r}", lambda t, f=flag, v=v: [*RUN, f, v, "--out", str(t / "o")])
for v in ("tpu", "cuda", "cuda:99", "", "mps"):
    case(f"run --device {v!r}", lambda t, v=v: [*RUN, "--device", v, "--out", str(t / "o")])
for flag, v in (("--split", "bogus"), ("--split", ""), ("--dtype", "float8"), ("--dtype", "")):
    case(f"run {flag} {v!r}", lambda t, f=flag, v=v: [*RUN, f, v, "--out", str(t / "o")])
for v in ("3/2", "0/0", "a/b", "1", "-1/2", "0/2/3", "2/2", ""):
    case(f"run --shard {v!r}", lambda t, v=v: [*RUN, "--shard", v, "--out", str(t / "o")])
for v in ("noequals", "=1", "bogus=1", "lr=abc", "lr=-1", "lr=.nan", "lr=.inf", "steps=0", "steps=-3",
          "hidden=1.5", "hidden=-5", "steps=1000000000000", "lambda_fair=abc"):
    case(f"run fairmap --method-arg {v}", lambda t, v=v: [*RUN, "--method", "fairmap", "--method-arg", v,
                                                            "--out", str(t / "o")])
for v in ("noequals", "bogus=1"):
    case(f"run --classifier-arg {v}", lambda t, v=v: [*RUN, "--classifier-arg", v, "--out", str(t / "o")])
    case(f"run --extractor-arg {v}", lambda t, v=v: [*RUN, "--extractor-arg", v, "--out", str(t / "o")])
case("run --method-arg for vanilla, which takes none", lambda t: [*RUN, "--method-arg", "lr=1", "--out", str(t / "o")])
case("run unknown flag", lambda t: [*RUN, "--nn", "3", "--out", str(t / "o")])
case("run flag without its value", lambda t: [*RUN, "--out", str(t / "o"), "--n"])
case("run a stray positional", lambda t: [*RUN, "extra", "--out", str(t / "o")])
case("unknown subcommand", lambda t: ["rnu"])
case("no subcommand", lambda t: [])
case("ls bogus", lambda t: ["ls", "bogus"])
case("ls nothing", lambda t: ["ls"])

# --config
CONFIGS = {
    "missing": None, "a folder": "DIR", "empty": "", "not YAML": "{n: [", "a list": "- 1\n- 2\n",
    "unknown key": "n: 2\nbogus: 1\n", "wrong type": "n: two\n", "a python tag": "n: !!python/object/apply:os.getcwd []\n",
    "not UTF-8": b"n: \xff\xfe\n", "n 0": "n: 0\n", "guidance nan": "guidance_scale: .nan\n",
    "method_args a list": "method: fairmap\nmethod_args: [1, 2]\n", "a scalar": "3\n",
    "billion laughs": "a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
                      "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n",
}
for what, text in CONFIGS.items():
    def prep(t, text=text):
        if text == "DIR":
            (t / "c.yaml").mkdir()
        elif text is not None:
            write(t / "c.yaml", text)
    case(f"run --config {what}", lambda t: [*RUN, "--config", str(t / "c.yaml"), "--out", str(t / "o")], prep,
         want=0 if what == "empty" else 2)  # an empty YAML file sets nothing

# --out and the other output paths of run
def a_file(t: Path) -> None:
    write(t / "f", "the user's file")
def symlink_out(t: Path) -> None:
    (t / "outside").mkdir(); (t / "link").symlink_to(t / "outside")
def user_files(t: Path) -> None:
    write(t / "mine" / "thesis.tex", "my work")
case("run --out ''", lambda t: [*RUN, "--out", ""])
case("run --out is a file", lambda t: [*RUN, "--out", str(t / "f")], a_file)
case("run --out under a file", lambda t: [*RUN, "--out", str(t / "f" / "o")], a_file)
case("run --out unwritable", lambda t: [*RUN, "--out", "/proc/fairbench-out"])
case("run --out component 300 chars", lambda t: [*RUN, "--out", str(t / ("x" * 300))])
case("run --out a symlink to a folder", lambda t: [*RUN, "--out", str(t / "link")], symlink_out)
case("run --out a folder of user files", lambda t: [*RUN, "--out", str(t / "mine")], user_files)
case("run --out another run (other seed)", lambda t: [*RUN, "--seed", "5", "--out", str(t / "r")], copy_run("run"))
case("run --out another run (other limit)", lambda t: [*RUN, "--limit", "1", "--out", str(t / "r")], copy_run("run"))
case("run --out a shard of the run", lambda t: [*RUN, "--out", str(t / "r")], copy_run("s0"))
case("run --baseline-out is a file", lambda t: [*RUN, "--method", "fairmap", "--method-arg", "steps=2",
                                                 "--baseline-out", str(t / "f"), "--out", str(t / "o")], a_file)
for what, prep in (("missing", None), ("a file", a_file), ("an empty folder", lambda t: (t / "e").mkdir())):
    path = {"missing": "nope", "a file": "f", "an empty folder": "e"}[what]
    case(f"run --reference {what}", lambda t, p=path: [*RUN, "--reference", str(t / p), "--out", str(t / "o")], prep)

# ---------------------------------------------------------------------------------------------------------------
# 2. suites

SUITE_HEAD = 'name: s\ntemplate: "a photo of a {occupation}"\n'
ONE_PROMPT = "prompts:\n  - id: p1\n    vars: {occupation: nurse}\n"
SUITES = {
    "missing": None, "empty": "", "a list": "- 1\n", "not UTF-8": b"name: \xff\n" + ONE_PROMPT.encode(),
    "no template": "name: s\n" + ONE_PROMPT,
    "no prompts": SUITE_HEAD, "prompts empty": SUITE_HEAD + "prompts: []\n", "prompts a mapping": SUITE_HEAD + "prompts: {a: 1}\n",
    "prompt without id": SUITE_HEAD + "prompts:\n  - vars: {occupation: nurse}\n",
    "duplicate ids": SUITE_HEAD + "prompts:\n  - id: p1\n    vars: {occupation: nurse}\n  - id: p1\n    vars: {occupation: cook}\n",
    "id with a slash": SUITE_HEAD + "prompts:\n  - id: a/b\n    vars: {occupation: nurse}\n",
    "id ..": SUITE_HEAD + "prompts:\n  - id: ..\n    vars: {occupation: nurse}\n",
    "id absolute": SUITE_HEAD + "prompts:\n  - id: /tmp/x\n    vars: {occupation: nurse}\n",
    "id too long": SUITE_HEAD + "prompts:\n  - id: " + "p" * 300 + "\n    vars: {occupation: nurse}\n",
    "id empty": SUITE_HEAD + "prompts:\n  - id: ''\n    vars: {occupation: nurse}\n",
    "vars not a mapping": SUITE_HEAD + "prompts:\n  - id: p1\n    vars: [nurse]\n",
    "variable missing": SUITE_HEAD + "prompts:\n  - id: p1\n    vars: {job: nurse}\n",
    "template attribute access": 'name: s\ntemplate: "a {occupation.__class__}"\n' + ONE_PROMPT,
    "template index": 'name: s\ntemplate: "a {occupation[0]}"\n' + ONE_PROMPT,
    "template positional": 'name: s\ntemplate: "a {0}"\n' + ONE_PROMPT,
    "template conversion": 'name: s\ntemplate: "a {occupation!r}"\n' + ONE_PROMPT,
    "template unbalanced": 'name: s\ntemplate: "a {occupation"\n' + ONE_PROMPT,
    "variable named a": 'name: s\ntemplate: "a photo of a {a}"\nprompts:\n  - id: p1\n    vars: {a: nurse}\n',

    "requested group unknown": SUITE_HEAD + ONE_PROMPT + "    requested: {gender: alien}\n",
    "requested attribute unknown": SUITE_HEAD + ONE_PROMPT + "    requested: {height: tall}\n",
    "unknown top-level key": SUITE_HEAD + ONE_PROMPT + "bogus: 1\n",
    "a python tag": SUITE_HEAD + "prompts: !!python/object/apply:os.getcwd []\n",
    "prompt vars value a list": SUITE_HEAD + "prompts:\n  - id: p1\n    vars: {occupation: [a, b]}\n",
}
for what, text in SUITES.items():
    def prep(t, text=text):
        if text is not None:
            write(t / "s.yaml", text)
    case(f"run --suite file {what}", lambda t: [*RUN, "--suite", str(t / "s.yaml"), "--out", str(t / "o")], prep)
case("run --suite template variable named template (valid)",
     lambda t: [*RUN, "--suite", write(t / "s.yaml", 'name: s\ntemplate: "a photo of a {template}"\nprompts:\n'
                                       '  - id: p1\n    vars: {template: nurse}\n'), "--out", str(t / "o")], want=0)
# explicit suites name the group through a prompt variable {group} (prompts/suites/explicit.yaml)
case("run --suite template variable named group (valid)",
     lambda t: [*RUN, "--suite", write(t / "s.yaml", 'name: s\ntemplate: "a photo of a {group}"\nprompts:\n'
                                       '  - id: p1\n    vars: {group: nurse}\n'), "--out", str(t / "o")], want=0)
case("run --suite a folder", lambda t: [*RUN, "--suite", str(t), "--out", str(t / "o")])

# ---------------------------------------------------------------------------------------------------------------
# 3. run directories given to every reading subcommand: missing, a file, empty, unrelated, ''

def not_a_run(t: Path) -> None:
    a_file(t); (t / "e").mkdir(); write(t / "u" / "notes.txt", "unrelated")


READERS = {  # (case folder, the bad directory) -> argv
    "report": lambda t, d: ["report", d],
    "report --baseline": lambda t, d: ["report", str(t / "w"), "--baseline", d],
    "leaderboard": lambda t, d: ["leaderboard", d, "--out", "lb.csv"],
    "leaderboard --explicit": lambda t, d: ["leaderboard", str(base / "run"), "--explicit", d, "--out", "lb.csv"],
    "merge": lambda t, d: ["merge", d, str(base / "s1"), "--out", "m"],
    "classify": lambda t, d: ["classify", d, "--classifier", "synthface"],
    "quality": lambda t, d: ["quality", d, "--reference", str(base / "other")],
    "quality --reference": lambda t, d: ["quality", str(t / "w"), "--reference", d],
    "check": lambda t, d: ["check", d, "--against", str(base / "ref.json")],
    "check --against": lambda t, d: ["check", str(t / "w"), "--against", d],
    "reference": lambda t, d: ["reference", d, "--out", "ref.json"],
    "compare": lambda t, d: ["compare", d, "--baseline", str(base / "run")],
    "compare --baseline": lambda t, d: ["compare", str(t / "w"), "--baseline", d],
}
for cmd, argv in READERS.items():
    for what, rel in (("missing", "nope"), ("a file", "f"), ("an empty folder", "e"), ("a folder of other files", "u")):
        case(f"{cmd}: run directory {what}", lambda t, a=argv, r=rel: a(t, str(t / r)), not_a_run)
    case(f"{cmd}: run directory ''", lambda t, a=argv: a(t, ""), not_a_run)

# ---------------------------------------------------------------------------------------------------------------
# 4. damaged files inside a run, read back by every subcommand that reads them

# the key each file cannot do without (a missing optional key is no damage)
REQUIRED = {"run.json": "spec", "metrics.json": "attributes", "compare.json": "attributes", "ref.json": "units"}


def mangle_json(kind: str, text: str, required: str) -> str | bytes | None:
    """A damaged copy of a JSON object file."""
    obj = json.loads(text)
    if kind == "deleted":
        return None
    if kind == "empty":
        return ""
    if kind == "{}":
        return "{}"
    if kind == "a list":
        return "[1, 2]"
    if kind == "not UTF-8":
        return b"\xff\xfe" + text.encode()[2:]
    if kind == "truncated":
        return text[: len(text) // 2]
    if kind == "unknown key":
        return json.dumps({**obj, "bogus_key": 1})
    if kind == "key missing":
        return json.dumps({k: v for k, v in obj.items() if k != required})
    if kind == "wrong type":
        return json.dumps({**obj, required: "x"})
    if kind == "a folder":
        return "DIR"
    raise ValueError(kind)


JSON_DAMAGE = ["deleted", "empty", "{}", "a list", "not UTF-8", "truncated", "unknown key", "key missing",
               "wrong type", "a folder"]


def damaged(src: str, file: str, kind: str, mangle=mangle_json) -> Callable[[Path], None]:
    def prep(t: Path) -> None:
        d = copy_run(src)(t)
        text = (d / file).read_text(encoding="utf-8")
        new = mangle(kind, text, REQUIRED[file]) if mangle is mangle_json else mangle(kind, text)
        (d / file).unlink()
        if new == "DIR":
            (d / file).mkdir()
        elif new is not None:
            write(d / file, new)
    return prep


RUN_JSON_READERS = {
    "report": (lambda t: ["report", str(t / "r")], 2),
    "leaderboard": (lambda t: ["leaderboard", str(t / "r"), "--out", str(t / "lb.csv")], 2),
    "check": (lambda t: ["check", str(t / "r"), "--against", str(base / "ref.json")], 2),
    "reference": (lambda t: ["reference", str(t / "r"), "--out", str(t / "ref.json")], 2),
    "compare": (lambda t: ["compare", str(t / "w"), "--baseline", str(t / "r")], 2),
    "classify": (lambda t: ["classify", str(t / "r"), "--classifier", "synthface"], 2),
    "quality": (lambda t: ["quality", str(t / "r"), "--reference", str(base / "other")], 2),
    "resume": (lambda t: [*RUN, "--out", str(t / "r")], REPAIR),
}
for kind in JSON_DAMAGE:
    for cmd, (argv, want) in RUN_JSON_READERS.items():
        case(f"{cmd}: run.json {kind}", argv, damaged("run", "run.json", kind), want)
    for cmd in ("report", "leaderboard", "compare", "quality"):
        argv, want = RUN_JSON_READERS[cmd]
        # metrics.json and compare.json are versioned (schema_version): a reader passes keys it does not read
        case(f"{cmd}: metrics.json {kind}", argv, damaged("run", "metrics.json", kind),
             0 if kind == "unknown key" else want)
    case(f"merge: shard run.json {kind}", lambda t: ["merge", str(t / "r"), str(base / "s1"), "--out", str(t / "m")],
         damaged("s0", "run.json", kind))
    # without compare.json, the report has no comparison section
    case(f"report --baseline: compare.json {kind}",
         lambda t: ["report", str(t / "r"), "--baseline", str(base / "run")], damaged("fm", "compare.json", kind),
         0 if kind in ("unknown key", "deleted") else 2)


def mangle_manifest(kind: str, text: str) -> str | bytes | None:
    rows = [json.loads(line) for line in text.splitlines()]
    r0 = rows[0]
    lines = text.splitlines(keepends=True)
    if kind == "deleted":
        return None
    if kind == "empty":
        return ""
    if kind == "a row not JSON":
        return "{not json\n" + "".join(lines[1:])
    if kind == "a row a list":
        return "[1, 2]\n" + "".join(lines[1:])
    if kind == "not UTF-8":
        return b"\xff" + text.encode()
    if kind == "a row missing its sha256":
        return json.dumps({k: v for k, v in r0.items() if k != "sha256"}) + "\n" + "".join(lines[1:])
    if kind == "a row with an unknown key":
        return json.dumps({**r0, "bogus": 1}) + "\n" + "".join(lines[1:])
    if kind == "a row's seed a string":
        return json.dumps({**r0, "seed": "x"}) + "\n" + "".join(lines[1:])
    if kind == "a row's image absolute":
        return json.dumps({**r0, "image": "/etc/hostname"}) + "\n" + "".join(lines[1:])
    if kind == "a row's image ..":
        return json.dumps({**r0, "image": "../../outside.png"}) + "\n" + "".join(lines[1:])
    if kind == "a row naming another unit's image":
        return json.dumps({**r0, "image": rows[1]["image"]}) + "\n" + "".join(lines[1:])
    if kind == "a duplicated row":
        return text + lines[-1]
    if kind == "a wrong sha256":
        return json.dumps({**r0, "sha256": "0" * 64}) + "\n" + "".join(lines[1:])
    raise ValueError(kind)


MANIFEST_DAMAGE = ["deleted", "empty", "a row not JSON", "a row a list", "not UTF-8", "a row missing its sha256",
                   "a row with an unknown key", "a row's seed a string", "a row's image absolute", "a row's image ..",
                   "a row naming another unit's image", "a duplicated row", "a wrong sha256"]
MANIFEST_READERS = {k: RUN_JSON_READERS[k] for k in ("report", "check", "reference", "compare", "classify", "resume")}
for kind in MANIFEST_DAMAGE:
    for cmd, (argv, want) in MANIFEST_READERS.items():
        case(f"{cmd}: manifest {kind}", argv, damaged("run", "manifest.jsonl", kind, mangle_manifest), want)
    case(f"merge: shard manifest {kind}", lambda t: ["merge", str(t / "r"), str(base / "s1"), "--out", str(t / "m")],
         damaged("s0", "manifest.jsonl", kind, mangle_manifest))


def damaged_labels(kind: str) -> Callable[[Path], None]:
    def prep(t: Path) -> None:
        d = copy_run("run")(t)
        p = d / "labels.parquet"
        data = p.read_bytes()
        p.unlink()
        if kind == "empty":
            p.write_bytes(b"")
        elif kind == "garbage":
            p.write_bytes(b"not a parquet file at all")
        elif kind == "truncated":
            p.write_bytes(data[: len(data) // 2])
        elif kind == "another run's":
            shutil.copy(base / "other" / "labels.parquet", p)
        elif kind == "columns missing":
            import pandas as pd
            pd.read_parquet(base / "run" / "labels.parquet").iloc[:, :2].to_parquet(p)
        elif kind == "codes out of range":
            import pandas as pd
            df = pd.read_parquet(base / "run" / "labels.parquet")
            col = next(c for c in df.columns if c.startswith("gender"))
            df[col] = 99 if df[col].dtype.kind in "iu" else "martian"
            df.to_parquet(p)
    return prep


for kind in ("deleted", "empty", "garbage", "truncated", "another run's", "columns missing", "codes out of range"):
    for cmd in ("report", "leaderboard", "check", "reference", "compare"):
        argv, want = RUN_JSON_READERS[cmd]
        # report and leaderboard read run.json and metrics.json only, never the labels
        case(f"{cmd}: labels.parquet {kind}", argv, damaged_labels(kind),
             0 if cmd in ("report", "leaderboard") else want)
    case(f"resume: labels.parquet {kind}", RUN_JSON_READERS["resume"][0], damaged_labels(kind), REPAIR)


def damaged_image_in(d: Path, kind: str) -> None:
    """Damage the first image of run directory `d`."""
    img, other = sorted((d / "images").rglob("*.png"))[:2]
    if kind == "deleted":
        img.unlink()
    elif kind == "truncated":
        img.write_bytes(img.read_bytes()[:40])
    elif kind == "zero bytes":
        img.write_bytes(b"")
    elif kind == "another image's bytes":
        img.write_bytes(other.read_bytes())
    elif kind == "a link outside":
        write(d.parent / "outside.png", img.read_bytes())
        img.unlink(); img.symlink_to(d.parent / "outside.png")
    elif kind == "a stray extra":
        shutil.copy(img, img.with_name("99999.png"))
    elif kind == "a folder":
        img.unlink(); img.mkdir()


def damaged_image(src: str, kind: str) -> Callable[[Path], None]:
    return lambda t: damaged_image_in(copy_run(src)(t), kind)


for kind in ("deleted", "truncated", "zero bytes", "another image's bytes", "a link outside", "a stray extra",
             "a folder"):
    case(f"resume: image {kind}", RUN_JSON_READERS["resume"][0], damaged_image("run", kind), REPAIR)
    if kind != "a stray extra":
        for cmd in ("check", "reference", "classify"):
            argv, want = RUN_JSON_READERS[cmd]
            case(f"{cmd}: image {kind}", argv, damaged_image("run", kind), want)
        case(f"merge: shard image {kind}", lambda t: ["merge", str(t / "r"), str(base / "s1"), "--out", str(t / "m")],
             damaged_image("s0", kind))


# ---------------------------------------------------------------------------------------------------------------
# 5. other subcommands' own flags and inputs

# check
for v in ("0", "1", "-0.1", "2", "nan", "abc"):
    case(f"check --alpha {v}", lambda t, v=v: ["check", str(base / "run"), "--against", str(base / "ref.json"), "--alpha", v])
for v in ("0", "-5", "abc", "1000000000000"):
    case(f"check --permutations {v}", lambda t, v=v: ["check", str(base / "run"), "--against", str(base / "ref.json"),
                                                       "--permutations", v])
def damaged_ref(kind: str) -> Callable[[Path], None]:
    def prep(t: Path) -> None:
        text = (base / "ref.json").read_text()
        r = json.loads(text)
        if kind == "codes out of range":
            for key, v in r["units"].items():
                if key not in ("key", "prompt_id", "seed", "sha256") and isinstance(v, list):
                    r["units"][key] = [99] * len(v)
                    break
            new: str | bytes | None = json.dumps(r)
        elif kind == "sha256 not hex":
            r["units"]["sha256"] = ["zz"] * len(r["units"]["sha256"])
            new = json.dumps(r)
        elif kind == "columns of different lengths":
            r["units"]["seed"] = r["units"]["seed"][:1]
            new = json.dumps(r)
        elif kind == "units a list":
            r["units"] = []
            new = json.dumps(r)
        elif kind == "a future schema":
            r["schema_version"] = 999
            new = json.dumps(r)
        else:
            new = mangle_json(kind, text, REQUIRED["ref.json"])
        if new == "DIR":
            (t / "ref.json").mkdir()
        elif new is not None:
            write(t / "ref.json", new)
    return prep


for kind in [*JSON_DAMAGE, "codes out of range", "sha256 not hex", "columns of different lengths", "units a list",
             "a future schema"]:
    case(f"check --against reference {kind}", lambda t: ["check", str(base / "run"), "--against", str(t / "ref.json")],
         damaged_ref(kind))
case("check against a run that does not pair", lambda t: ["check", str(base / "run"), "--against", str(base / "other")])
case("reference --out is a folder", lambda t: ["reference", str(base / "run"), "--out", str(t)])
case("reference --out under a file", lambda t: ["reference", str(base / "run"), "--out", str(t / "f" / "r.json")], a_file)
case("reference --out ''", lambda t: ["reference", str(base / "run"), "--out", ""])

# compare
for v in ("0", "-1", "abc"):
    case(f"compare --n-boot {v}", lambda t, v=v: ["compare", str(t / "r"), "--baseline", str(base / "run"), "--n-boot", v],
         copy_run("fm"))
for v in BAD_NAME:
    case(f"compare --extractor {v!r}", lambda t, v=v: ["compare", str(t / "r"), "--baseline", str(base / "run"),
                                                       "--extractor", v], copy_run("fm"))
case("compare a run with a shard", lambda t: ["compare", str(t / "r"), "--baseline", str(base / "s0")], copy_run("fm"))
case("compare a baseline whose labels came from another run",
     lambda t: ["compare", str(t / "r"), "--baseline", str(t / "b")],
     lambda t: (copy_run("run")(t), copy_run("run", "b")(t),
                shutil.copy(base / "other" / "labels.parquet", t / "b" / "labels.parquet")) and None)

# leaderboard
for v in ("bogus", "", ",", "gender,,bogus"):
    case(f"leaderboard --attributes {v!r}", lambda t, v=v: ["leaderboard", str(base / "run"), "--attributes", v,
                                                            "--out", str(t / "lb.csv")])
case("leaderboard --out a folder", lambda t: ["leaderboard", str(base / "run"), "--out", str(t)])
case("leaderboard --out under a file", lambda t: ["leaderboard", str(base / "run"), "--out", str(t / "f" / "x.csv")], a_file)
case("leaderboard --markdown a folder", lambda t: ["leaderboard", str(base / "run"), "--out", str(t / "lb.csv"),
                                                    "--markdown", str(t)])
case("leaderboard --out ''", lambda t: ["leaderboard", str(base / "run"), "--out", ""])
case("leaderboard a shard", lambda t: ["leaderboard", str(base / "s0"), "--out", str(t / "lb.csv")])

# merge
case("merge one shard of two", lambda t: ["merge", str(base / "s0"), "--out", str(t / "m")])
case("merge a shard twice", lambda t: ["merge", str(base / "s0"), str(base / "s0"), "--out", str(t / "m")])
case("merge a shard with a whole run", lambda t: ["merge", str(base / "s0"), str(base / "run"), "--out", str(t / "m")])
case("merge shards of different runs", lambda t: ["merge", str(base / "s0"), str(base / "other"), "--out", str(t / "m")])
case("merge --out a folder of user files", lambda t: ["merge", str(base / "s0"), str(base / "s1"), "--out", str(t / "mine")],
     user_files)
case("merge --out a finished other run", lambda t: ["merge", str(base / "s0"), str(base / "s1"), "--out", str(t / "r")],
     copy_run("other"))
case("merge --out ''", lambda t: ["merge", str(base / "s0"), str(base / "s1"), "--out", ""])

# classify
for v in BAD_NAME:
    case(f"classify --classifier {v!r}", lambda t, v=v: ["classify", str(t / "r"), "--classifier", v], copy_run("run"))
for v in ("noequals", "bogus=1"):
    case(f"classify --classifier-arg {v}", lambda t, v=v: ["classify", str(t / "r"), "--classifier", "synthface",
                                                           "--classifier-arg", v], copy_run("run"))
for v in ("tpu", "cuda:99", ""):
    case(f"classify --device {v!r}", lambda t, v=v: ["classify", str(t / "r"), "--classifier", "synthface",
                                                     "--device", v], copy_run("run"))
case("classify a shard", lambda t: ["classify", str(t / "r"), "--classifier", "synthface"], copy_run("s0"))

# quality
for v in BAD_NAME:
    case(f"quality --extractor {v!r}", lambda t, v=v: ["quality", str(t / "r"), "--extractor", v,
                                                       "--reference", str(base / "other")], copy_run("run"))
for v in ("0", "-3", "abc", "1.5"):
    case(f"quality --batch-size {v}", lambda t, v=v: ["quality", str(t / "r"), "--batch-size", v], copy_run("run"))
case("quality --clip-model nope", lambda t: ["quality", str(t / "r"), "--clip-model", "nope/nope"], copy_run("run"))
case("quality --extractor-arg bogus=1", lambda t: ["quality", str(t / "r"), "--reference", str(base / "other"),
                                                   "--extractor-arg", "bogus=1"], copy_run("run"))
case("quality --reference a folder of non-images", lambda t: ["quality", str(t / "r"), "--reference", str(t / "u")],
     lambda t: (copy_run("run")(t), not_a_run(t)) and None)

# train
TRAIN = ["train", "--method", "fairmap", "--method-arg", "steps=2"]
for what, argv in {
    "--method vanilla (not trainable)": ["train", "--method", "vanilla"],
    "--method nope": ["train", "--method", "nope"],
    "--model nope": [*TRAIN, "--model", "nope"],
    "--suite nope": [*TRAIN, "--suite", "nope"],
    "--method-arg bogus=1": [*TRAIN, "--method-arg", "bogus=1"],
    "--method-arg lr=.nan": [*TRAIN, "--method-arg", "lr=.nan"],
    "--method-arg steps=0": ["train", "--method", "fairmap", "--method-arg", "steps=0"],
    "--dtype float8": [*TRAIN, "--dtype", "float8"],
    "--device tpu": [*TRAIN, "--device", "tpu"],
    "--device cuda:99": [*TRAIN, "--device", "cuda:99"],
}.items():
    case(f"train {what}", lambda t, a=argv: [*a, "--out", str(t / "ck")])
case("train --out is a file", lambda t: [*TRAIN, "--out", str(t / "f")], a_file)
case("train --out ''", lambda t: [*TRAIN, "--out", ""])

# make-tiny-sd, fetch-inception
case("make-tiny-sd into a file", lambda t: ["make-tiny-sd", str(t / "f")], a_file)
case("make-tiny-sd --seed abc", lambda t: ["make-tiny-sd", str(t / "m"), "--seed", "abc"])
case("make-tiny-sd --arch sd9", lambda t: ["make-tiny-sd", str(t / "m"), "--arch", "sd9"])
case("make-tiny-sd into a folder of user files", lambda t: ["make-tiny-sd", str(t / "mine")], user_files)
case("make-tiny-sd ''", lambda t: ["make-tiny-sd", ""])
case("fetch-inception offline", lambda t: ["fetch-inception", str(t / "inc.pth")])
case("fetch-inception into a folder", lambda t: ["fetch-inception", str(t)])

# ---------------------------------------------------------------------------------------------------------------
# 6. score: an image folder and a prompts file from another system

def score_dir(t: Path, rows: str, name: str = "p.csv", images: dict[str, bytes] | None = None) -> None:
    (t / "imgs").mkdir()
    good = next((base / "run" / "images").rglob("*.png")).read_bytes()
    for fname, data in (images if images is not None else {"a.png": good, "b.png": good}).items():
        write(t / "imgs" / fname, data)
    write(t / name, rows)


def bomb_png() -> bytes:
    w = h = 30000
    raw = zlib.compress(b"\x00" * (w + 1))
    def chunk(typ: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + typ + data + struct.pack(">I", zlib.crc32(typ + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)) + \
        chunk(b"IDAT", raw) + chunk(b"IEND", b"")


SCORE = lambda t, name="p.csv": ["score", str(t / "imgs"), "--prompts", str(t / name), "--out", str(t / "o")]  # noqa: E731
HEAD = "image,prompt_id,prompt\n"
SCORE_INPUTS = {
    "valid": (HEAD + "a.png,nurse,a photo of a nurse\nb.png,nurse,a photo of a nurse\n", "p.csv", None, 0),
    "prompts empty": ("", "p.csv", None, 2),
    "header only": (HEAD, "p.csv", None, 2),
    "no image column": ("prompt_id,prompt\nnurse,a nurse\n", "p.csv", None, 2),
    "no prompt_id column": ("image,prompt\na.png,a nurse\n", "p.csv", None, 2),
    "a missing image": (HEAD + "zz.png,nurse,a nurse\n", "p.csv", None, 2),
    "an absolute image path": (HEAD + "/etc/hostname,nurse,a nurse\n", "p.csv", None, 2),
    "an image path with ..": (HEAD + "../p.csv,nurse,a nurse\n", "p.csv", None, 2),
    "an image listed twice": (HEAD + "a.png,nurse,a nurse\na.png,nurse,a nurse\n", "p.csv", None, 2),
    "an empty prompt_id": (HEAD + "a.png,,a nurse\n", "p.csv", None, 2),
    "a prompt_id with a slash": (HEAD + "a.png,../x,a nurse\n", "p.csv", None, 2),
    "not UTF-8": (HEAD.encode() + b"a.png,nurse,a \xff nurse\n", "p.csv", None, 2),
    "sample_idx negative": ("image,prompt_id,prompt,sample_idx\na.png,nurse,a nurse,-1\n", "p.csv", None, 2),
    "sample_idx not a number": ("image,prompt_id,prompt,sample_idx\na.png,nurse,a nurse,x\n", "p.csv", None, 2),
    "a JSONL line not an object": ('[1, 2]\n', "p.jsonl", None, 2),
    "a JSONL line not JSON": ('{"image": \n', "p.jsonl", None, 2),
    "a NUL in an image name": (json.dumps({"image": "a\x00.png", "prompt_id": "nurse", "prompt": "a nurse"}) + "\n",
                               "p.jsonl", None, 2),
    "an unknown file type": ("image\tprompt_id\na.png\tnurse\n", "p.tsv", None, 2),
    "a decompression bomb": (HEAD + "a.png,nurse,a nurse\n", "p.csv", {"a.png": bomb_png()}, 2),
    "a text file as an image": (HEAD + "a.png,nurse,a nurse\n", "p.csv", {"a.png": b"not an image"}, 2),
    "a zero-byte image": (HEAD + "a.png,nurse,a nurse\n", "p.csv", {"a.png": b""}, 2),
}
for what, (rows, name, images, want) in SCORE_INPUTS.items():
    case(f"score {what}", lambda t, n=name: SCORE(t, n),
         lambda t, r=rows, n=name, i=images: score_dir(t, r, n, i), want)
def link_image(t: Path) -> None:
    score_dir(t, HEAD + "a.png,nurse,a nurse\n", images={})
    write(t / "outside.png", next((base / "run" / "images").rglob("*.png")).read_bytes())
    (t / "imgs" / "a.png").symlink_to(t / "outside.png")
case("score an image that links outside the folder", SCORE, link_image)
VALID = HEAD + "a.png,nurse,a photo of a nurse\n"
for flag, values in (("--n-boot", ["-1", "0", "abc"]), ("--ci-level", ["2", "nan", "0"]),
                     ("--classifier", ["nope"]), ("--detector", ["nope"]), ("--suite", ["nope"]),
                     ("--device", ["tpu"]), ("--classifier-arg", ["bogus=1"])):
    for v in values:
        case(f"score {flag} {v}", lambda t, f=flag, v=v: [*SCORE(t), f, v], lambda t: score_dir(t, VALID))
case("score images folder missing", lambda t: ["score", str(t / "nope"), "--prompts", str(t / "p.csv"),
                                               "--out", str(t / "o")], lambda t: write(t / "p.csv", VALID) and None)
case("score images folder is a file", lambda t: ["score", str(t / "p.csv"), "--prompts", str(t / "p.csv"),
                                                 "--out", str(t / "o")], lambda t: write(t / "p.csv", VALID) and None)
case("score --prompts missing", lambda t: ["score", str(t / "imgs"), "--prompts", str(t / "nope.csv"),
                                           "--out", str(t / "o")], lambda t: score_dir(t, VALID))
case("score --prompts a folder", lambda t: ["score", str(t / "imgs"), "--prompts", str(t / "imgs"),
                                            "--out", str(t / "o")], lambda t: score_dir(t, VALID))
case("score --suite whose ids do not match", lambda t: [*SCORE(t), "--suite", "occupations"], lambda t: score_dir(
    t, HEAD + "a.png,not-an-occupation,a photo\n"))

# ---------------------------------------------------------------------------------------------------------------
# 7. plans

def plan_text(**over) -> str:
    p = {"name": "p", "out": "plan-out", "models": ["synthface-vl"],
         "suites": [{"name": "s", "suite": "occupations", "n": 1, "limit": 1}],
         "methods": [{"method": "vanilla"}]}
    p.update(over)
    return json.dumps(p)


PLANS = {
    "missing": None, "empty": "", "a list": "[1]", "not UTF-8": b"\xff\xfe", "not YAML": "{name: [",
    "a python tag": "name: !!python/object/apply:os.getcwd []\n",
    "no name": json.dumps({"models": ["synthface-vl"], "suites": [], "methods": []}),
    "unknown key": plan_text(bogus=1),
    "unknown model": plan_text(models=["nope"]),
    "unknown method": plan_text(methods=[{"method": "nope"}]),
    "unknown suite": plan_text(suites=[{"name": "s", "suite": "nope", "n": 1}]),
    "n 0": plan_text(suites=[{"name": "s", "suite": "occupations", "n": 0}]),
    "limit -1": plan_text(suites=[{"name": "s", "suite": "occupations", "n": 1, "limit": -1}]),
    "methods not a list": plan_text(methods="vanilla"),
    "no methods": plan_text(methods=[]),
    "label with ..": plan_text(methods=[{"method": "vanilla", "label": "../../escape"}]),
    "label absolute": plan_text(methods=[{"method": "vanilla", "label": "/tmp/escape"}]),
    "two methods with one label": plan_text(methods=[{"method": "vanilla", "label": "x"},
                                                     {"method": "fairmap", "label": "x"}]),
    "suite name with a slash": plan_text(suites=[{"name": "a/b", "suite": "occupations", "n": 1}]),
    "method-arg nan": plan_text(methods=[{"method": "fairmap", "args": {"lr": float("nan")}}]),
    "method-arg unknown": plan_text(methods=[{"method": "fairmap", "args": {"bogus": 1}}]),
    "out a file": plan_text(out="f"),
    "a folder": "DIR",
}
for what, text in PLANS.items():
    def prep(t, text=text):
        a_file(t / "cwd")  # `out: f` of "out a file", relative to where the plan runs
        if text == "DIR":
            (t / "p.yaml").mkdir()
        elif text is not None:
            write(t / "p.yaml", text)
    case(f"plan {what}", lambda t: ["plan", str(t / "p.yaml"), "--dry-run"], prep)
case("plan a shipped name that does not exist", lambda t: ["plan", "nope-plan", "--dry-run"])

# ---------------------------------------------------------------------------------------------------------------
# 8. the world-building lab (python -m lab.synthface)

for argv in (["train", "--lr", "-1"], ["train", "--lr", "nan"], ["train", "--neutral-share", "2"],
             ["train", "--steps", "0"], ["train", "--steps", "-5"], ["train", "--batch-size", "0"],
             ["train", "--seed", "-1"], ["train", "--timestep-power", "0"], ["train", "--init-from", "nope"],
             ["train", "--max-minutes", "-1"], ["train-clip", "--steps", "0"], ["train-clip", "--hard-negatives", "-1"],
             ["train-clip", "--image-bodies", "bogus"], ["train-clip", "--init-from", "nope"],
             ["train-classifier", "--steps", "0"], ["install", "--model-dir", "nope"],
             ["install", "--world", "bogus"], ["grid", "--prompts", ""], ["bogus-stage"]):
    case("lab synthface " + " ".join(argv), lambda t, a=argv: ["synthface", *a, *(
        ["--out", str(t / "st")] if a[0] in ("train", "train-clip", "train-classifier") else [])])
case("lab synthface train --out is a file", lambda t: ["synthface", "train", "--out", str(t / "f")], a_file)


# ---------------------------------------------------------------------------------------------------------------

def try_case(c: Case) -> tuple[bool, str, object, int, str, list[str]]:
    t = Path(tempfile.mkdtemp(dir=base, prefix="case-"))
    (t / "cwd").mkdir()
    copy_run("fm", "w")(t)  # the run a command writes into when the damaged one is its other argument
    if c.prep:
        c.prep(t)
    argv = c.argv(t)
    before = snapshot(t)
    cmd = ["-m", "lab.synthface", *argv[1:]] if argv[:1] == ["synthface"] else ["-m", "fairbench", *argv]
    try:
        p = subprocess.run([sys.executable, *cmd], capture_output=True, text=True, timeout=120, cwd=t / "cwd",
                           env=ENV, errors="replace")
        code, errtext = p.returncode, p.stderr
    except subprocess.TimeoutExpired:
        code, errtext = "timeout (accepted and working)", ""
    lines = [line for line in errtext.strip().splitlines() if line.strip()]
    after = snapshot(t)
    changed = sorted(k for k in after if before.get(k) != after[k])
    clean_refusal = code == 2 and len(lines) == 1 and not changed
    if c.want == REPAIR:
        ok = clean_refusal or (code == 0 and run_digest(t / "r") == run_digest(base / "run"))
    elif c.want == 2:
        ok = clean_refusal
    else:
        ok = code == c.want
    shutil.rmtree(t, ignore_errors=True)
    return ok, c.name, code, len(lines), lines[-1][:200] if lines else "", [k.replace(str(t), "") for k in changed[:2]]


def shared_state() -> dict[str, tuple[int, int]]:
    return {k: v for k, v in snapshot(base).items() if "/case-" not in k}


cases = [c for c in CASES if not opts.only or opts.only in c.name]
if opts.list:
    print("\n".join(f"{c.want}\t{c.name}" for c in cases))  # what the case must end with, and its name
    print(f"{len(cases)} cases")
    sys.exit(0)
setup()
shared_before = shared_state()
assert len({c.name for c in CASES}) == len(CASES), "case names must be unique"
print(f"{len(cases)} cases", flush=True)
results = []
with ThreadPoolExecutor(max_workers=opts.jobs) as pool:
    for ok, name, code, n_lines, last, changed in pool.map(try_case, cases):
        results.append((ok, name, code, n_lines, last, changed))
        print(("OK  " if ok else "BAD ") + f"{name}: exit {code}, {n_lines} lines: {last[:160]} "
              f"{changed if changed else ''}", flush=True)
if opts.out:
    with open(opts.out, "w", encoding="utf-8") as f:
        f.write("ok\tcase\texit\tstderr_lines\tlast_line\tchanged\n")
        for r in results:
            f.write("\t".join(str(x).replace("\t", " ") for x in r) + "\n")
touched = sorted(k for k, v in shared_state().items() if shared_before.get(k) != v)
print()
if touched:  # a case wrote into the runs every case reads: its result cannot be trusted
    print(f"the shared setup runs were changed: {touched[:5]}")
print(f"{sum(r[0] for r in results)} of {len(results)} clean")
sys.exit(0 if not touched else 1)
