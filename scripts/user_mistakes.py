"""Try classes of user mistakes on every kind of input, each in its own `fairbench` process, and count the
clean ones: exit 2 with one line on stderr and nothing created (or exit 0 where the input is valid).

    python scripts/user_mistakes.py          # works in a temporary folder, removed at the end
"""
import atexit
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["FAIRBENCH_CACHE"] = tempfile.mkdtemp()
from fairbench.cli.main import main

REPO = Path(__file__).resolve().parent.parent

base = Path(tempfile.mkdtemp(prefix="fairbench-mistakes-"))
atexit.register(shutil.rmtree, base, True)
atexit.register(shutil.rmtree, os.environ["FAIRBENCH_CACHE"], True)
os.chdir(base)
RUN = ["run", "--n", "2", "--limit", "2", "--no-progress", "--n-boot", "20", "--dtype", "float32"]
assert main([*RUN, "--out", str(base / "run")]) == 0
assert main([*RUN, "--shard", "0/2", "--out", str(base / "s0")]) == 0
assert main([*RUN, "--shard", "1/2", "--out", str(base / "s1")]) == 0
assert main([*RUN, "--limit", "1", "--out", str(base / "other")]) == 0
assert main(["reference", str(base / "run"), "--out", str(base / "ref.json")]) == 0

def snap(d: Path) -> list[str]:
    return sorted(str(p) for p in d.rglob("*"))


results = []


def case(name, argv_fn, prep=None, want=2):
    t = Path(tempfile.mkdtemp(dir=base))
    if prep:
        prep(t)
    argv = argv_fn(t)
    before = snap(base)
    try:
        # "synthface ..." is the world-building lab's command line, run from the checkout
        cmd = ["-m", "lab.synthface", *argv[1:]] if argv[:1] == ["synthface"] else ["-m", "fairbench", *argv]
        p = subprocess.run([sys.executable, *cmd], capture_output=True, text=True, timeout=90, cwd=base,
                           env={**os.environ, "PYTHONPATH": str(REPO)})
        code, errtext = p.returncode, p.stderr
    except subprocess.TimeoutExpired:
        code, errtext = "TIMEOUT (accepted and working)", ""
    lines = [l for l in errtext.strip().splitlines() if l.strip()]
    created = sorted(set(snap(base)) - set(before))
    ok = code == want and (want != 2 or (len(lines) == 1 and not created))
    results.append((ok, name, code, len(lines), lines[-1][:150] if lines else "", created[:2]))
    print(("OK  " if ok else "BAD ") + f"{name}: exit {code}, {len(lines)} lines: {lines[-1][:160] if lines else ''} "
          f"{created[:2]}", flush=True)


def write(p: Path, text: str) -> str:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return str(p)

def suite(t, var):
    return write(t / "s.yaml", f'name: s\ntemplate: "a photo of a {{{var}}}"\nprompts:\n  - id: p1\n    vars: {{{var}: nurse}}\n')

case("suite variable template is an ordinary name", lambda t: [*RUN, "--suite", suite(t, "template"), "--out", str(t / "o")], want=0)
case("method-arg lr=.nan", lambda t: [*RUN, "--method", "fairmap", "--method-arg", "lr=.nan", "--out", str(t / "o")])
case("method-arg hidden=-5", lambda t: [*RUN, "--method", "fairmap", "--method-arg", "hidden=-5", "--out", str(t / "o")])
case("method-arg steps=1e12", lambda t: [*RUN, "--method", "fairmap", "--method-arg", "steps=1000000000000", "--out", str(t / "o")])
case("steps huge", lambda t: [*RUN, "--steps", "100000000", "--out", str(t / "o")])
case("out component 300 chars", lambda t: [*RUN, "--out", str(t / ("x" * 300))])
for var in ("a",):
    case(f"suite variable {var}", lambda t, v=var: [*RUN, "--suite", suite(t, v), "--out", str(t / "o")])
case("suite requested group unknown", lambda t: [*RUN, "--suite", write(t / "s.yaml", 'name: s\ntemplate: "a photo of a {occupation}"\nprompts:\n  - id: p1\n    vars: {occupation: nurse}\n    requested: {gender: alien}\n'), "--out", str(t / "o")])
case("suite id too long", lambda t: [*RUN, "--suite", write(t / "s.yaml", 'name: s\ntemplate: "a photo of a {occupation}"\nprompts:\n  - id: ' + "p" * 300 + '\n    vars: {occupation: nurse}\n'), "--out", str(t / "o")])
def symlink_out(t):
    (t / "outside").mkdir(); (t / "link").symlink_to(t / "outside")
case("out is a symlink to a folder", lambda t: [*RUN, "--out", str(t / "link")], symlink_out)
def user_files(t):
    (t / "mine").mkdir(); (t / "mine" / "thesis.tex").write_text("my work")
case("out is a folder of user files", lambda t: [*RUN, "--out", str(t / "mine")], user_files)
def plan(t, run_name):
    return write(t / "p.yaml", json.dumps({"name": "p", "out": str(t / "plan"), "models": ["synthface-vl"],
        "suites": [{"name": "s", "suite": "occupations", "n": 1, "limit": 1}],
        "methods": [{"method": "vanilla", "label": run_name}]}))
case("plan label with ..", lambda t: ["plan", plan(t, "../../escape"), "--dry-run"])
case("plan label absolute", lambda t: ["plan", plan(t, "/tmp/escape"), "--dry-run"])
case("synthface train --lr -1", lambda t: ["synthface", "train", "--lr", "-1", "--out", str(t / "st")])
case("synthface train --neutral-share 2", lambda t: ["synthface", "train", "--neutral-share", "2", "--out", str(t / "st")])
# metrics.json lacking fields
def thin_metrics(t):
    shutil.copytree(base / "run", t / "r")
    m = json.loads((t / "r" / "metrics.json").read_text())
    for a in m["attributes"].values():
        a.pop("aggregate", None)
    (t / "r" / "metrics.json").write_text(json.dumps(m))
case("report, metrics lacking aggregate", lambda t: ["report", str(t / "r")], thin_metrics)
case("leaderboard, metrics lacking aggregate", lambda t: ["leaderboard", str(t / "r"), "--out", str(t / "l.csv")], thin_metrics)
case("compare, metrics lacking aggregate", lambda t: ["compare", str(t / "r"), "--baseline", str(base / "run")], thin_metrics)
def thin_compare(t):
    shutil.copytree(base / "run", t / "r")
    (t / "r" / "compare.json").write_text('{"a": 1}')
case("report --baseline with compare.json lacking fields", lambda t: ["report", str(t / "r"), "--baseline", str(base / "run")], thin_compare)
# check reference with label codes out of range
def bad_ref(t):
    r = json.loads((base / "ref.json").read_text())
    k = next(iter(r["units"]["labels"])) if isinstance(r["units"].get("labels"), dict) else None
    if k: r["units"]["labels"][k] = [99] * len(r["units"]["labels"][k])
    else:
        for key, v in r["units"].items():
            if key != "key" and isinstance(v, list): r["units"][key] = [99] * len(v); break
    (t / "ref.json").write_text(json.dumps(r))
case("check reference label codes out of range", lambda t: ["check", str(base / "run"), "--against", str(t / "ref.json")], bad_ref)
# shards
def shard_bad_manifest(t):
    shutil.copytree(base / "s0", t / "s0"); (t / "s0" / "manifest.jsonl").write_text("{not json\n")
case("merge shard with broken manifest", lambda t: ["merge", str(t / "s0"), str(base / "s1"), "--out", str(t / "m")], shard_bad_manifest)
def shard_bad_runjson(t):
    shutil.copytree(base / "s0", t / "s0"); (t / "s0" / "run.json").write_text('{"spec": {"n": "x"}}')
case("merge shard with broken run.json", lambda t: ["merge", str(t / "s0"), str(base / "s1"), "--out", str(t / "m")], shard_bad_runjson)
def shard_missing_image(t):
    shutil.copytree(base / "s0", t / "s0"); next((t / "s0" / "images").rglob("*.png")).unlink()
case("merge shard with a deleted image", lambda t: ["merge", str(t / "s0"), str(base / "s1"), "--out", str(t / "m")], shard_missing_image)
# score
def bomb(t):
    (t / "imgs").mkdir()
    w = h = 30000  # PIL refuses the size before decoding anything
    raw = zlib.compress(b"\x00" * (w + 1))
    def chunk(typ, data): return struct.pack(">I", len(data)) + typ + data + struct.pack(">I", zlib.crc32(typ + data))
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")
    (t / "imgs" / "a.png").write_bytes(png)
    write(t / "p.csv", "image,prompt_id,prompt\na.png,nurse,a photo of a nurse\n")
case("score a decompression bomb", lambda t: ["score", str(t / "imgs"), "--prompts", str(t / "p.csv"), "--out", str(t / "o")], bomb)
def nul(t):
    (t / "imgs").mkdir(); shutil.copy(next((base / "run" / "images").rglob("*.png")), t / "imgs" / "a.png")
    write(t / "p.jsonl", json.dumps({"image": "a\x00.png", "prompt_id": "nurse", "prompt": "a nurse"}) + "\n")
case("score NUL in an image name", lambda t: ["score", str(t / "imgs"), "--prompts", str(t / "p.jsonl"), "--out", str(t / "o")], nul)
def foreign_labels(t):
    shutil.copytree(base / "run", t / "b"); shutil.copy(base / "other" / "labels.parquet", t / "b" / "labels.parquet")
case("compare baseline whose labels came from another run", lambda t: ["compare", str(base / "run"), "--baseline", str(t / "b")], foreign_labels)
print()
print(f"{sum(r[0] for r in results)} of {len(results)} clean")
