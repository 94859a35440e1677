"""The semantic tokenizer: shapes and determinism for any length, from a model directory, and the
token/label agreement measures against scikit-learn."""

import json

import jax
import numpy as np
import pytest

from musiclm_jax.models.w2v_bert import W2vBert
from musiclm_jax.tokenizers.semantic import SemanticTokenizer, token_label_agreement
from musiclm_jax.training.partitioning import unbox


@pytest.fixture(scope="module")
def tiny_w2v_bert() -> W2vBert:
    import gin
    from musiclm_jax import gin_registry, gin_utils

    gin.clear_config()
    try:
        gin_utils.parse(["models/w2v_bert/tiny.gin"], [])
        return gin_registry.W2vBert()
    finally:
        gin.clear_config()


def test_token_label_agreement_matches_sklearn():
    from sklearn.metrics import normalized_mutual_info_score

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 2000)
    tokens = np.where(rng.random(2000) < 0.7, labels * 3 + rng.integers(0, 3, 2000), rng.integers(0, 15, 2000))
    got = token_label_agreement([tokens[:900], tokens[900:]], [labels[:900], labels[900:]])
    assert got["nmi"] == pytest.approx(normalized_mutual_info_score(labels, tokens), rel=1e-9)
    joint = np.zeros((15, 5))
    np.add.at(joint, (tokens, labels), 1)
    assert got["purity"] == pytest.approx(joint.max(1).sum() / 2000)
    # unlabelled frames (label < 0) are skipped; identical partitions give NMI 1
    same = token_label_agreement([np.array([1, 1, 2, 7])], [np.array([0, 0, 1, -1])])
    assert same == {"purity": 1.0, "nmi": pytest.approx(1.0)}


def test_tokenizer_any_length_and_deterministic(tiny_w2v_bert):
    model = tiny_w2v_bert
    sr = model.config.sample_rate
    params = unbox(model.get_initial_variables(jax.random.PRNGKey(0), {"audio": (1, sr)}))["params"]
    rng = np.random.default_rng(1)
    centroids = rng.standard_normal((8, model.config.d_model)).astype(np.float32)
    tok = SemanticTokenizer(model, params, centroids, layer=1)
    spf = tok.samples_per_frame
    clips = [0.1 * rng.standard_normal(n).astype(np.float32) for n in (spf * 5, spf * 7 + 13, 100)]
    tokens = tok.tokenize(clips)
    assert [t.shape for t in tokens] == [(5,), (8,), (1,)]
    assert all(t.dtype == np.int32 and t.min() >= 0 and t.max() < 8 for t in tokens)
    for a, b in zip(tokens, tok.tokenize(clips)):
        np.testing.assert_array_equal(a, b)
    batch = tok.tokenize(np.stack([clips[0], clips[0]]))
    assert batch.shape == (2, 5)
    np.testing.assert_array_equal(batch[0], tokens[0])
    with pytest.raises(ValueError, match="non-empty"):
        tok.tokenize([np.zeros(0, np.float32)])


def test_cli_fit_kmeans_and_tokenizer_from_model_dir(tmp_path, tokenizer_model_dirs, capsys):
    """`musiclm fit_semantic_kmeans --gin_file=experiments/w2v_bert_tiny.gin` on a w2v-BERT training
    directory (random-init tiny, tests/model_dirs.py), then the tokenizer from the directory: 25 Hz
    tokens of the fitted clusters for any clip length. In-process: a subprocess costs ~20 s."""
    import shutil

    from musiclm_jax import main

    model_dir = tmp_path / "w2v"
    shutil.copytree(tokenizer_model_dirs["w2v_bert_dir"], model_dir, ignore=shutil.ignore_patterns("kmeans"))
    code = main.main(
        [
            "fit_semantic_kmeans",
            "--gin_file=experiments/w2v_bert_tiny.gin",
            "--gin.KMEANS_CLUSTERS=8",
            "--gin.KMEANS_EXAMPLES=12",
            "--gin.KMEANS_EVAL_EXAMPLES=4",
            "--gin.w2v_task/SyntheticSource.num_examples=32",
            "--gin.w2v_task/SyntheticSource.num_validation_examples=8",
            f"--gin.MODEL_DIR='{model_dir}'",
        ]
    )
    assert code == 0, capsys.readouterr().err[-3000:]
    assert "fitted 8 clusters on layer 1" in capsys.readouterr().out
    info = json.load(open(model_dir / "kmeans" / "kmeans.json"))
    assert info["num_clusters"] == 8 and info["layer"] == 1 and info["held_out_mean_sq_distance"] > 0
    tok = SemanticTokenizer.from_model_dir(str(model_dir))
    rng = np.random.default_rng(0)
    tokens = tok.tokenize([0.1 * rng.standard_normal(n).astype(np.float32) for n in (16000, 40000)])
    assert [t.shape for t in tokens] == [(25,), (63,)]
    assert all(t.min() >= 0 and t.max() < 8 for t in tokens)
