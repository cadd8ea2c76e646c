"""The tuned lexical reference: chosen on the validation window, and on nothing else."""

import pytest

import classify.lexical as lexical
from pipeline.dataset import load_split
from train.evaluate import TunedLexical
from classify.lexical import LEXICAL_GRID, LexicalModel, LexicalParams, select_lexical
from classify.validation import split_off_validation

GRID = [LexicalParams("logreg", 1, 1, 2), LexicalParams("logreg", 10, 1, 2),
        LexicalParams("linear-svm", 0.3, 1, 2, "balanced")]


def test_the_grid_is_the_documented_one():
    assert len(LEXICAL_GRID) == 80 == len(set(LEXICAL_GRID))
    assert {p.model for p in LEXICAL_GRID} == {"logreg", "linear-svm"}
    assert {p.ngram_max for p in LEXICAL_GRID} == {1, 2}
    assert {p.min_df for p in LEXICAL_GRID} == {1, 2}
    assert {p.class_weight for p in LEXICAL_GRID} == {None, "balanced"}
    assert LEXICAL_GRID[0] == LexicalParams("logreg", 1, 1, 1)  # ties go to the simplest


def test_selection_reads_only_the_training_split_and_fits_only_before_its_window(
        reuters_dataset, monkeypatch):
    """Every article text the selection reads comes from the training split; the models
    are fitted on the days before the validation window only; test windows (April,
    June) never reach it, and the choice is the best validation F1 of the grid."""
    train = load_split(reuters_dataset, "train")
    tests = {a.id for s in ("1987-04", "1987-06") for a in load_split(reuters_dataset, s)}
    before, window, _, _ = split_off_validation(train, 5)
    read: list[str] = []
    fitted_rows: list[int] = []
    text = lexical.lexical_text
    monkeypatch.setattr(lexical, "lexical_text", lambda a: read.append(a.id) or text(a))
    estimator = lexical._estimator

    def recording(params):
        model = estimator(params)
        fit = model.fit
        model.fit = lambda x, y: (fitted_rows.append(x.shape[0]), fit(x, y))[1]
        return model

    monkeypatch.setattr(lexical, "_estimator", recording)
    reference = TunedLexical(train, 5, GRID, "reuters-acq")
    train_ids = {a.id for a in train}
    assert read and set(read) <= train_ids and not set(read) & tests
    assert fitted_rows == [len([a for a in before if a.signal is not None])] * len(GRID)
    report = reference.selection.report()
    assert [g["label"] for g in report["grid"]] == [p.label for p in GRID]
    assert report["validation_f1"] == max(g["validation_f1"] for g in report["grid"])
    assert report["window"]["n"] == len(window)
    chosen = next(g for g in report["grid"] if g["label"] == report["chosen"]["label"])
    assert chosen["validation_f1"] == report["validation_f1"]
    # scoring a test window afterwards reads it and changes nothing chosen
    read.clear()
    april = load_split(reuters_dataset, "1987-04")
    evaluation = reference.evaluate(april, "1987-04")
    assert evaluation.metrics["threshold"] == reference.model.calibration.threshold
    assert evaluation.metrics["f1"] > 0.8 and evaluation.metrics["ece"] < 0.05
    assert reference.selection.report() == report


def test_a_lexical_model_saves_and_loads_to_the_same_scores(reuters_dataset, tmp_path):
    train = load_split(reuters_dataset, "train")
    selection = select_lexical(train, 5, [LexicalParams("linear-svm", 0.3, 1, 2)])
    model = selection.model
    model.save(tmp_path / "lexical.joblib")
    again = LexicalModel.load(tmp_path / "lexical.joblib")
    sample = load_split(reuters_dataset, "1987-06")[:20]
    assert again.params == model.params and again.calibration == model.calibration
    assert again.margin(sample) == pytest.approx(model.margin(sample))
    assert again.p_signal(sample) == pytest.approx(model.p_signal(sample))


def test_a_lexical_file_names_no_project_module(reuters_dataset, tmp_path, monkeypatch):
    # An ensemble version's lexical.joblib is a pickle; were a project class in it, its
    # module path would be written too, and moving the module (train/ -> classify/) would
    # break every version already published. Only libraries may be named in it: every
    # class the unpickler looks up while loading the file is recorded.
    from joblib import numpy_pickle

    train = load_split(reuters_dataset, "train")
    selection = select_lexical(train, 5, [LexicalParams("logreg", 3.0, 1, 2)])
    selection.model.save(tmp_path / "lexical.joblib")
    named: set[str] = set()
    find_class = numpy_pickle.NumpyUnpickler.find_class

    def recording(self, module, name):
        named.add(module.split(".")[0])
        return find_class(self, module, name)

    monkeypatch.setattr(numpy_pickle.NumpyUnpickler, "find_class", recording)
    again = LexicalModel.load(tmp_path / "lexical.joblib")
    assert again.params == selection.model.params
    assert "sklearn" in named  # the recorder saw the file's classes
    project = {"pipeline", "classify", "train", "serve", "ingestion", "signals"}
    assert not named & project, named
