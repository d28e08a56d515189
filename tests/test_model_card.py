"""The reference model's version and card (`pocketsd.data.model_card`): no card is version 1, a card gives its
version, training steps and grammar to the results files and to `pocketsd info`; a damaged card is one line."""

from __future__ import annotations

import json

import pytest

from pocketsd.data import REFERENCE_MODEL
from pocketsd.data.model_card import MODEL_CARD_FILE, reference_model_card, reference_model_record
from pocketsd.errors import BadInput
from pocketsd.info import describe, model_card_lines

V2_CARD = {"version": 2, "base": {"version": 1, "folder": "x"},
           "grammar": {"p_position": 0.8, "p_pair": 0.25, "images": 6000},
           "unet_steps": {"this_run": 1500, "planned": 2000, "before": 3500}, "minutes": 41.0}


def test_a_folder_without_a_card_is_version_1(tmp_path):
    assert reference_model_card(tmp_path) == {"version": 1}
    record = reference_model_record(tmp_path)
    assert record["version"] == 1 and record["card"] is None


def test_a_card_gives_version_grammar_and_steps(tmp_path):
    (tmp_path / MODEL_CARD_FILE).write_text(json.dumps(V2_CARD))
    record = reference_model_record(tmp_path)
    assert record["version"] == 2 and record["grammar"]["p_pair"] == 0.25 and record["unet_steps"]["this_run"] == 1500
    assert "minutes" not in record  # run facts stay in the card


@pytest.mark.parametrize("text", ["{not json", json.dumps({"version": "two"}), json.dumps([2])])
def test_a_damaged_card_is_one_actionable_line(tmp_path, text):
    (tmp_path / MODEL_CARD_FILE).write_text(text)
    with pytest.raises(BadInput, match="restore it") as err:
        reference_model_card(tmp_path)
    assert "\n" not in str(err.value)


def test_info_on_the_embedded_model_without_a_card_says_version_1():
    if (REFERENCE_MODEL / MODEL_CARD_FILE).is_file():
        pytest.skip("the embedded model has a card (version 2 or later): test_info_prints_the_card covers it")
    assert "reference model version 1 (no model_card.json" in describe("reference")


def test_info_prints_the_card(tmp_path):
    (tmp_path / MODEL_CARD_FILE).write_text(json.dumps(V2_CARD))
    text = "\n".join(model_card_lines(tmp_path))
    assert "reference model version 2" in text
    assert "1,500 UNet steps of 2,000 planned, fine-tuned from version 1 (3,500 steps before)" in text
    assert "p_position 0.8" in text and "p_pair 0.25" in text


def test_a_folder_that_is_not_the_reference_and_has_no_card_gets_no_version(tmp_path):
    assert model_card_lines(tmp_path) == []
