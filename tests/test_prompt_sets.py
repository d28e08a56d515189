"""Prompt sets: the shipped set, the reference grammar and readers for the field's prompt files (fixtures written
here in each real file's format), deterministic subsampling, per-prompt seeds and one-line errors."""

from __future__ import annotations

import hashlib
import json
import random

import pytest

from pocketsd.data import DOMAINS_FILE
from pocketsd.data.grammar import adherence_scenes, all_scenes
from pocketsd.errors import BadInput
from pocketsd.data.prompt_sets import load_prompt_set, prompt_seed, scenes_of, subsample


def test_own_set_covers_the_domains_and_everyday_subjects():
    s = load_prompt_set("pocketsd")
    assert s.format == "pocketsd" and len(s) >= 256
    assert len(set(s.ids)) == len(s) and len(set(s.texts)) == len(s)
    categories = {p.category for p in s}
    presets = {d["name"] for d in json.loads(DOMAINS_FILE.read_text())["domains"] if d["lora"] is None}
    assert presets == {"marketing", "poster", "logo", "interior", "fashion", "food"}
    assert presets <= categories
    assert {"people", "animals", "landscape", "objects", "text", "art"} <= categories
    assert all(p.id.startswith(p.category + "-") for p in s)
    assert all(4 <= len(p.text.split()) <= 30 for p in s)  # real prompts, short enough for a 77-token encoder
    signs = [p for p in s if p.category == "text"]
    assert all('"' in p.text for p in signs)  # the text-on-signs prompts name the words to render


def test_reference_sets_carry_their_grammar_scenes():
    ref = load_prompt_set("reference")
    assert [p.scene for p in ref] == adherence_scenes()
    assert all(p.text == p.scene.caption for p in ref)
    assert scenes_of(ref) == adherence_scenes()
    full = load_prompt_set("reference-all")
    assert len(full) == len(all_scenes()) and len(set(full.ids)) == len(full)
    with pytest.raises(BadInput, match="grammar scene"):
        scenes_of(load_prompt_set("pocketsd", count=3))


def test_subsampling_is_deterministic_and_is_deepcompressors_choice():
    full = load_prompt_set("pocketsd")
    a = load_prompt_set("pocketsd", count=20, seed=0)
    b = load_prompt_set("pocketsd", count=20, seed=0)
    c = load_prompt_set("pocketsd", count=20, seed=1)
    assert a.ids == b.ids and a.ids != c.ids and len(a) == 20 and a.subsample_seed == 0
    # DeepCompressor's max_dataset_size: Random(seed).shuffle(names); names[:n]
    names = list(full.ids)
    random.Random(0).shuffle(names)
    assert set(a.ids) == set(names[:20])
    order = {pid: i for i, pid in enumerate(full.ids)}
    assert [order[i] for i in a.ids] == sorted(order[i] for i in a.ids)  # kept in file order
    assert subsample(list(full.prompts), None) == list(full.prompts)
    assert a.describe()["total"] == len(full)


def test_category_filter_then_count():
    s = load_prompt_set("pocketsd", categories=["food", "logo"], count=10, seed=3)
    assert len(s) == 10 and {p.category for p in s} <= {"food", "logo"}
    with pytest.raises(BadInput, match="no category nope"):
        load_prompt_set("pocketsd", categories=["nope"])


def test_prompt_seed_is_a_stable_hash_of_the_id():
    expected = int.from_bytes(hashlib.sha256(b"7:food-01").digest()[:8], "big") % (2**31 - 1)
    assert prompt_seed("food-01", 7) == expected
    assert prompt_seed("food-01", 0) != prompt_seed("food-01", 1) != prompt_seed("food-02", 1)
    assert all(0 <= prompt_seed(f"x-{i}") < 2**31 - 1 for i in range(100))


def test_mjhq_meta_data(tmp_path):
    meta = {
        "0a1b2c": {"category": "animals", "prompt": "a cat wearing a  crown,\nhyperrealistic"},
        "3d4e5f": {"category": "logo", "prompt": "a minimal fox logo"},
        "6a7b8c": {"category": "people", "prompt": "portrait of a sailor"},
    }
    path = tmp_path / "meta_data.json"
    path.write_text(json.dumps(meta))
    s = load_prompt_set(path)
    assert s.format == "mjhq" and s.ids == ["0a1b2c", "3d4e5f", "6a7b8c"]
    assert s.prompts[0].category == "animals" and s.prompts[0].text == "a cat wearing a crown, hyperrealistic"
    assert load_prompt_set(path, categories=["logo"]).texts == ["a minimal fox logo"]


def test_sdci_yaml(tmp_path):
    path = tmp_path / "sDCI.yaml"
    path.write_text("sa_1544: A wooden pier stretches into a calm lake under a pale sky.\n"
                    "sa_2001: 'A red bicycle: leaning on a wall'\n")
    s = load_prompt_set(path)
    assert s.format == "sdci" and s.ids == ["sa_1544", "sa_2001"]
    assert s.texts[1] == "A red bicycle: leaning on a wall" and s.prompts[0].category is None


def test_coco_captions_one_per_image(tmp_path):
    data = {
        "info": {"description": "COCO 2014"},
        "images": [{"id": 42, "file_name": "COCO_val2014_000000000042.jpg"}, {"id": 73, "file_name": "b.jpg"}],
        "annotations": [
            {"image_id": 42, "id": 900, "caption": "A dog runs on the beach."},
            {"image_id": 42, "id": 120, "caption": "A brown dog running near the sea. "},
            {"image_id": 73, "id": 500, "caption": "Two people ride bikes."},
        ],
    }
    path = tmp_path / "captions_val2014.json"
    path.write_text(json.dumps(data))
    s = load_prompt_set(path)
    assert s.format == "coco" and s.ids == ["coco-120", "coco-500"]
    assert s.texts[0] == "A brown dog running near the sea."
    assert load_prompt_set(path, coco_all_captions=True).ids == ["coco-900", "coco-120", "coco-500"]


def test_karpathy_dataset_coco_picks_deepcompressors_caption(tmp_path):
    sentences = [{"raw": f"caption {i}", "sentid": i} for i in range(5)]
    data = {"dataset": "coco", "images": [
        {"filename": "COCO_val2014_000000391895.jpg", "imgid": 0, "split": "test", "cocoid": 391895,
         "sentences": sentences}]}
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps(data))
    code = 0
    for ch in "COCO_val2014_000000391895":
        code = (code * 31 + ord(ch)) % (10**9 + 7)
    s = load_prompt_set(path)
    assert s.format == "coco-karpathy" and s.ids == ["coco-0"] and s.prompts[0].category == "test"
    assert s.texts == [f"caption {code % 5}"]


def test_parti_prompts_tsv(tmp_path):
    path = tmp_path / "PartiPrompts.tsv"
    path.write_text("Prompt\tCategory\tChallenge\tNote\n"
                    "bond\tAbstract\tBasic\tBiology-inspired concepts with multiple meanings\n"
                    'A robot painted as graffiti on a brick wall. The words "Fly an airplane" are written on the '
                    "wall.\tOutdoor Scenes\tComplex\t\n"
                    '"G I G G L E" painted in thick lettering as graffiti\tIllustrations\tWriting & Symbols\t\n')
    s = load_prompt_set(path)
    assert s.format == "parti" and s.ids == ["parti-1", "parti-2", "parti-3"]
    assert '"Fly an airplane"' in s.texts[1] and s.prompts[1].category == "Outdoor Scenes"
    # A leading quote is text in the real file (line 1562 of PartiPrompts.tsv), not CSV quoting.
    assert s.texts[2] == '"G I G G L E" painted in thick lettering as graffiti'


def test_plain_text(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("# calibration prompts\n\na lighthouse at dusk\n  a bowl of ramen  \n# end\n")
    s = load_prompt_set(path)
    assert s.format == "text" and s.ids == ["line-3", "line-4"] and s.texts == ["a lighthouse at dusk",
                                                                               "a bowl of ramen"]


@pytest.mark.parametrize("name, content, message", [
    ("bad.json", "{not json", "not valid JSON"),
    ("list.json", "[1, 2]", "no known prompt format"),
    ("noprompt.json", json.dumps({"abc": {"category": "x"}}), 'entry abc has no "prompt"'),
    ("own.json", json.dumps({"format": "pocketsd-prompts", "version": 9, "prompts": []}), "version 9"),
    ("dup.json", json.dumps({"format": "pocketsd-prompts", "version": 1, "prompts": [
        {"id": "a", "prompt": "x y"}, {"id": "a", "prompt": "z w"}]}), "appears twice"),
    ("coco.json", json.dumps({"annotations": [{"image_id": 1, "caption": "x"}]}), 'lacks "id" or "caption"'),
    ("list.yaml", "- a\n- b\n", "expected a YAML mapping"),
    ("broken.yaml", "a: [unclosed\n", "not valid YAML"),
    ("noheader.tsv", "bond\tAbstract\n", 'include "Prompt"'),
    ("empty.txt", "# only a comment\n\n", "holds no prompts"),
])
def test_bad_files_are_one_line_bad_input_naming_the_file(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(BadInput, match=message) as err:
        load_prompt_set(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_missing_file_count_and_binary(tmp_path):
    with pytest.raises(BadInput, match="no such prompt file.*pocketsd"):
        load_prompt_set(tmp_path / "nope.txt")
    with pytest.raises(BadInput, match="4 prompts asked for, it has 3"):
        path = tmp_path / "p.txt"
        path.write_text("a\nb\nc\n")
        load_prompt_set(path, count=4)
    with pytest.raises(BadInput, match="positive integer"):
        load_prompt_set("pocketsd", count=0)
    binary = tmp_path / "x.txt"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(BadInput, match="not UTF-8"):
        load_prompt_set(binary)


SHARD_SCRIPT = """
import json, sys
from pocketsd.data.prompt_sets import load_prompt_set, prompt_seed
from pocketsd.eval.sharding import map_sharded, process_state, shard

state = process_state()
ids = load_prompt_set("pocketsd", count=37).ids
work = lambda pid: {"id": pid, "seed": prompt_seed(pid, 5), "rank": state.process_index}
out = map_sharded(work, ids, state)
if state.is_main_process:
    json.dump({"processes": state.num_processes, "results": out, "mine": shard(ids, state)}, open(sys.argv[1], "w"))
"""


def test_sharded_run_over_two_cpu_processes_equals_the_one_process_run(tmp_path):
    import os
    import subprocess
    import sys

    from pocketsd.eval.sharding import map_sharded

    script = tmp_path / "shard_job.py"
    script.write_text(SHARD_SCRIPT)
    out = tmp_path / "out.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # torchrun: accelerate's own launcher starts several CPU processes only through mpirun.
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(script), str(out)], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    got = json.loads(out.read_text())
    ids = load_prompt_set("pocketsd", count=37).ids
    single = map_sharded(lambda pid: {"id": pid, "seed": prompt_seed(pid, 5)}, ids)
    assert got["processes"] == 2
    assert [{"id": r["id"], "seed": r["seed"]} for r in got["results"]] == single
    assert {r["rank"] for r in got["results"]} == {0, 1}  # both processes did work
    assert got["mine"] == ids[:19]  # contiguous shares, the first (longer) one on the main process
