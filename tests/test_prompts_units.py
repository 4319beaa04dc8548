"""Suites as data, template rendering, work units and seeds, registry errors."""

import pytest

from fairbench.errors import UserError
from fairbench.prompts import attribute, load_suite, render_template
from fairbench.registry import Registry
from fairbench.units import make_units, unit_seed


def test_occupation_suite_has_153_with_documented_split():
    suite = load_suite("occupations")
    assert len(suite.prompts) == 153
    test = suite.select("test")
    assert len(test) == 31 and len(suite.select("train")) == 122
    # stratified: the test split spans male-skewed to female-skewed occupations
    shares = [p.reference["sd15_female"] / (p.reference["sd15_female"] + p.reference["sd15_male"]) for p in test]
    assert min(shares) < 0.05 and max(shares) > 0.9


def test_heim_suites():
    assert len(load_suite("descriptors").prompts) == 15
    assert len(load_suite("heim_occupations").prompts) == 13


def test_templates_and_articles():
    suite = load_suite("occupations")
    by_id = {p.id: p for p in suite.prompts}
    assert suite.text(by_id["accountant"]) == "a photo of the face of an accountant"
    assert suite.text(by_id["nurse"]) == "a photo of the face of a nurse"
    assert suite.group_text(by_id["accountant"], "female") == "a photo of the face of a female accountant"
    assert suite.group_text(by_id["nurse"], "East Asian") == "a photo of the face of an East Asian nurse"
    assert render_template("{a} {x}", x="university professor") == "a university professor"
    assert render_template("{a} {x}", x="hour") == "an hour"


def test_select_limit_keeps_file_order():
    suite = load_suite("occupations")
    assert [p.id for p in suite.select("test", 3)] == [p.id for p in suite.select("test")][:3]


def test_attributes_have_expected_groups():
    assert attribute("gender").group_names == ["male", "female"]
    assert attribute("race7").k == 7 and attribute("race4").k == 4 and attribute("age").k == 9
    assert attribute("monk").k == 10
    with pytest.raises(UserError, match="unknown attribute"):
        attribute("height")


def test_user_suite_file_is_validated(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntemplate: 'a {o}'\nprompts:\n  - {id: '../etc', vars: {o: a}}\n")
    with pytest.raises(UserError, match="prompt id"):
        load_suite(str(bad))
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(UserError, match="malformed YAML"):
        load_suite(str(broken))
    good = tmp_path / "mine.yaml"
    good.write_text("name: mine\ntemplate: 'a photo of {a} {o}'\nprompts:\n  - {id: owl, vars: {o: owl}}\n")
    assert load_suite(str(good)).text(load_suite(str(good)).prompts[0]) == "a photo of an owl"


def test_unit_seed_is_sha256_derived_and_stable():
    # golden: first 8 bytes of sha256(b"0\x1fnurse\x1f0"), shifted right by one bit
    import hashlib

    digest = hashlib.sha256(b"0\x1fnurse\x1f0").digest()
    assert unit_seed(0, "nurse", 0) == int.from_bytes(digest[:8], "big") >> 1
    assert unit_seed(0, "nurse", 0) == 5632017294265281760  # computed with coreutils sha256sum
    assert unit_seed(0, "nurse", 1) != unit_seed(0, "nurse", 0) != unit_seed(1, "nurse", 0)
    assert 0 <= unit_seed(5, "x", 3) < 2**63


def test_units_canonical_order_and_batches_partition():
    suite = load_suite("occupations")
    units = make_units(suite, "vanilla", "m", n=3, global_seed=0, split="test", limit=4)
    assert len(units) == 12
    assert [u.key for u in units[:4]] == [f"{units[0].prompt_id}/0000{i}" for i in range(3)] + [f"{units[3].prompt_id}/00000"]
    from fairbench.generation.engine import canonical_batches

    batches = canonical_batches(units, 5)
    assert [len(b) for b in batches] == [5, 5, 2]
    shards = [batches[i::2] for i in range(2)]  # what --shard i/2 takes
    assert sorted(u.key for s in shards for b in s for u in b) == sorted(u.key for u in units)
    # seeds do not depend on n (adding samples never changes existing images)
    more = make_units(suite, "vanilla", "m", n=5, global_seed=0, split="test", limit=4)
    assert {u.key: u.seed for u in units}.items() <= {u.key: u.seed for u in more}.items()


def test_registry_unknown_name_suggests():
    reg: Registry[int] = Registry("widget")
    reg.add("fairmap", 1)
    reg.add("vanilla", 2)
    with pytest.raises(UserError, match=r"unknown widget 'fairmpa'. Did you mean fairmap\? Available: fairmap, vanilla"):
        reg.get("fairmpa")
    with pytest.raises(ValueError, match="already registered"):
        reg.add("vanilla", 3)


def test_a_broken_plugin_is_named_and_skipped(monkeypatch, capsys):
    import fairbench.registry as registry

    class BrokenEntryPoint:
        name, value = "broken", "nowhere:register"

        def load(self):
            raise ImportError("no module named nowhere")

    monkeypatch.setattr(registry, "entry_points", lambda group: [BrokenEntryPoint()])
    reg = registry.Registry("method", entry_point_group="fairbench.tests-broken")  # a group no one loaded yet
    reg.add("vanilla", object)
    assert reg.names() == ["vanilla"]
    assert "broken" in reg.broken_plugins and "'broken'" in capsys.readouterr().err


@pytest.mark.parametrize("template,message", [
    ("{0} {occupation}", "not a variable name"),
    ("a photo of { {occupation}", "unmatched brace"),
    ("{occupation.__class__.__mro__}", "not a variable name"),
    ("{occupation!r}", "not a variable name"),
    ("{occupation:>40}", "not a variable name"),
])
def test_templates_fill_named_variables_only(tmp_path, capsys, template, message):
    from fairbench.cli.main import main

    suite = tmp_path / "s.yaml"
    suite.write_text(f'name: s\ntemplate: "{template}"\nprompts:\n  - {{id: nurse, vars: {{occupation: nurse}}}}\n')
    assert main(["run", "--suite", str(suite), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "out").exists()


def test_render_template_golden():
    from fairbench.prompts import render_template

    assert render_template("a photo of {a} {occupation} {{x}}", occupation="engineer") == "a photo of an engineer {x}"
    assert render_template("{a} {group} {occupation}", group="old", occupation="nurse") == "an old nurse"


@pytest.mark.parametrize("ids,message", [(["nurse\\n"], "must match"), (["Nurse", "nurse"], "ignoring case")])
def test_prompt_ids_that_would_break_file_names_are_refused(tmp_path, ids, message):
    from fairbench.errors import UserError
    from fairbench.prompts import load_suite_file

    rows = "".join(f'  - {{id: "{i}", vars: {{occupation: x}}}}\n' for i in ids)
    path = tmp_path / "s.yaml"
    path.write_text(f'name: s\ntemplate: "{{occupation}}"\nprompts:\n{rows}')
    with pytest.raises(UserError, match=message):
        load_suite_file(path)


def test_emotions_suite_requests_an_expression_and_carries_a_designed_skew():
    from fairbench.prompts import attribute, load_suite

    suite = load_suite("emotions")
    groups = attribute("expression").group_names
    assert len(suite.prompts) >= 10 and len(groups) >= 5
    assert {p.requested["expression"] for p in suite.prompts} == set(groups)  # every expression is asked for
    for p in suite.prompts:
        assert set(p.reference) == {"designed_female_share", "designed_light_share"}
        assert all(0.0 < v < 1.0 for v in p.reference.values())
    assert suite.text(suite.prompts[3]) == "a photo of the face of a sad person"
