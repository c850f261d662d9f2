"""Search settings chosen by measured recall: the cheapest candidate setting whose recall@10 on
queries like the served ones reaches the target, checked against a naive search over every
candidate, on held-out queries, and through the stored-index path the app takes."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from vse.serving.index import (
    CALIBRATION_QUERIES,
    RECALL_FLOOR,
    RECALL_SLACK,
    RECALL_TARGET,
    Calibration,
    IndexStore,
    apply_search_settings,
    build_index,
    calibrate_search,
    calibration_queries,
    candidate_settings,
    choose_measured,
    exact_search,
    falls_short,
    higher_recall,
    load_or_build_index,
    recall_at_k,
    search_cost,
    search_settings_of,
)


def unit_rows(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered(
    n: int, d: int, queries: int, seed: int = 0, spread: float = 0.6, per_cluster: int = 20
) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around random centres, and held-out points of the same clusters as queries."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(4, n // per_cluster), d))
    points = unit_rows(
        centres[rng.integers(len(centres), size=n + queries)] + spread * rng.normal(size=(n + queries, d))
    )
    return points[:n], points[n:]


def naive_recall(data: np.ndarray, queries: np.ndarray, found: np.ndarray, k: int = 10) -> float:
    """A found row counts when its score reaches the k-th best score of a full sort."""
    scores = queries @ data.T
    kth = -np.sort(-scores, axis=1)[:, k - 1]
    return float(
        np.mean([sum(scores[q, i] >= kth[q] - 1e-5 for i in row if i >= 0) / k for q, row in enumerate(found)])
    )


def naive_choice(index, data: np.ndarray, queries: np.ndarray, candidates: list[dict], target: float):
    """Measure every candidate, then take the cheapest (first listed) reaching the target, else the
    cheapest within RECALL_SLACK of the best."""
    measured = []
    for settings in candidates:
        apply_search_settings(index, settings)
        measured.append((naive_recall(data, queries, index.search(queries, 10)[1]), settings))
    reaching = [m for m in measured if m[0] >= target]
    if reaching:
        return reaching[0]
    best = max(m[0] for m in measured)
    return [m for m in measured if m[0] >= best - RECALL_SLACK][0]


def test_recall_matches_the_naive_count_and_accepts_equal_rows():
    data, queries = clustered(400, 16, 30)
    found = np.argsort(-(queries @ data.T), axis=1)[:, 5:15]  # half of the true top 10
    kth = exact_search(data, queries, 10)[0][:, -1]
    assert recall_at_k(data, queries, found, kth) == pytest.approx(naive_recall(data, queries, found)) == 0.5
    twin = np.vstack([data, data[:1]])  # a duplicate of row 0: either copy is a right answer
    top = exact_search(twin, queries, 10)[1]
    swapped = np.where(top == 0, len(data), np.where(top == len(data), 0, top))
    assert recall_at_k(twin, queries, swapped, exact_search(twin, queries, 10)[0][:, -1]) == 1.0
    missing = np.full_like(found, -1)  # fewer results than k
    assert recall_at_k(data, queries, missing, kth) == 0.0


@pytest.mark.parametrize("kind, lists", [("hnsw", 0), ("ivfpq-rerank", 200)])
def test_candidates_come_cheapest_first_without_duplicates(kind, lists):
    size, dim, codes = 100_000, 64, 8
    candidates = candidate_settings(kind, size, dim, lists, codes)
    costs = [search_cost(kind, s, size, dim, lists, codes) for s in candidates]
    assert costs == sorted(costs)
    assert len({json.dumps(s, sort_keys=True) for s in candidates}) == len(candidates) > 5
    if kind == "ivfpq-rerank":
        assert {s["nprobe"] for s in candidates} >= {round(lists / 64), lists // 2}
        assert all(1 <= s["nprobe"] <= lists for s in candidates)


def test_few_lists_give_no_probe_count_twice():
    candidates = candidate_settings("ivfpq-rerank", 500, 16, 4, 2)
    assert sorted({s["nprobe"] for s in candidates}) == [1, 2]  # 1/64 .. 1/4 of 4 lists are all one list
    assert len(candidates) == len({json.dumps(s, sort_keys=True) for s in candidates})


@pytest.mark.parametrize("kind", ["hnsw", "ivfpq-rerank"])
@pytest.mark.parametrize("target", [0.9, RECALL_TARGET])
def test_the_choice_is_the_cheapest_setting_reaching_the_target(kind, target):
    data, queries = clustered(4_000, 32, 80, seed=1, spread=0.9)
    index = build_index(data, kind)
    ivf = None
    if kind == "ivfpq-rerank":
        import faiss

        ivf = faiss.extract_index_ivf(index.index)
    candidates = candidate_settings(kind, index.size, index.dim, ivf.nlist if ivf else 0, ivf.code_size if ivf else 0)
    expected_recall, expected = naive_choice(index, data, queries, candidates, target)
    calibration = calibrate_search(index, data, queries, target=target)
    assert calibration.settings == expected and search_settings_of(index) == expected
    assert calibration.recall == pytest.approx(expected_recall)
    assert calibration.met == (expected_recall >= target) and calibration.queries == len(queries)


def test_an_unreachable_target_keeps_a_setting_near_the_best_and_says_so(caplog):
    data, queries = clustered(3_000, 32, 60, seed=2, spread=1.5)
    index = build_index(data, "ivfpq-rerank")
    candidates = candidate_settings("ivfpq-rerank", index.size, index.dim, *ivf_shape(index))
    expected_recall, expected = naive_choice(index, data, queries, candidates, 1.01)
    caplog.set_level(logging.WARNING, logger="vse.serving.index")
    calibration = calibrate_search(index, data, queries, target=1.01)
    assert not calibration.met and "no setting reached recall@10" in caplog.text
    assert calibration.settings == expected and calibration.recall == pytest.approx(expected_recall)
    assert calibration.settings != candidates[-1]  # not the costliest: the last thousandths are not bought


@pytest.mark.parametrize(
    "recalls, target, chosen",
    [
        ([0.5, 0.8, 0.97, 0.99], 0.97, 2),
        ([0.5, 0.9, 0.907, 0.91], 0.97, 2),
        ([0.5, 0.9, 0.902, 0.91], 0.97, 3),
        ([0.9, 0.8], 0.97, 0),
        ([0.96], 0.97, 0),
    ],
)
def test_choosing_among_measured_settings(recalls, target, chosen):
    measured = [(r, {"ef_search": i}) for i, r in enumerate(recalls)]
    assert choose_measured(measured, target) == measured[chosen]


def ivf_shape(index) -> tuple[int, int]:
    import faiss

    ivf = faiss.extract_index_ivf(index.index)
    return ivf.nlist, ivf.code_size


def test_calibrated_settings_reach_the_target_on_queries_they_never_saw():
    """Small noisy isotropic clusters, where the compressed kind's size-based defaults miss 0.95
    (recall@10 0.92 here; 0.98 calibrated)."""
    data, queries = clustered(5_000, 64, 600, seed=3, per_cluster=5)
    seen, held_out = queries[:CALIBRATION_QUERIES], queries[CALIBRATION_QUERIES:]
    default = build_index(data, "ivfpq-rerank")
    calibrated = build_index(data, "ivfpq-rerank", queries=seen)
    default_recall = naive_recall(data, held_out, default.search(held_out, 10)[1])
    held_out_recall = naive_recall(data, held_out, calibrated.search(held_out, 10)[1])
    assert calibrated.calibration.met
    assert default_recall < 0.95 <= held_out_recall


@pytest.mark.parametrize("kind", ["exact", "flat", "sq8", "ivfpq"])
def test_kinds_without_settings_to_choose_are_left_alone(kind):
    data, queries = clustered(3_000, 16, 20)
    index = build_index(data, kind, queries=queries)
    assert index.calibration is None


def test_calibration_queries_sample_rows_and_leave_out_empty_ones():
    vectors = unit_rows(np.random.default_rng(0).normal(size=(1_000, 8)))
    vectors[::3] = 0  # untagged images have zero tag-list embeddings
    sample = calibration_queries(vectors.astype(np.float16), count=100)
    assert sample.dtype == np.float32 and 0 < len(sample) <= 100
    assert np.all(np.linalg.norm(sample, axis=1) > 0.5)
    assert np.array_equal(sample, calibration_queries(vectors.astype(np.float16), count=100))  # fixed sample
    assert len(calibration_queries(vectors[:10], count=100)) == len([r for r in vectors[:10] if r.any()])


def test_a_stored_index_keeps_its_calibrated_settings(tmp_path):
    data, queries = clustered(3_000, 32, 100, seed=4)
    store = IndexStore(tmp_path)
    digests = {"name": "image", "model": "m", "gallery": "g", "store": store}
    built = load_or_build_index(data, "hnsw", queries=queries, **digests)
    assert built.origin == "built" and built.calibration is not None
    loaded = load_or_build_index(data, "hnsw", queries=queries, **digests)
    assert loaded.origin == "loaded" and loaded.calibration == built.calibration
    assert search_settings_of(loaded) == built.calibration.settings
    manifest = json.loads(next(tmp_path.glob("image-*.json")).read_text())
    assert Calibration.from_json(manifest["search"]) == built.calibration
    rounded = queries.astype(np.float16).astype(np.float32)  # as a restart reads the stored embeddings
    assert load_or_build_index(data, "hnsw", queries=rounded, **digests).origin == "loaded"
    other = load_or_build_index(data, "hnsw", queries=queries[:50], **digests)  # calibrated on other queries
    assert other.origin == "built" and len(list(tmp_path.glob("image-*.faiss"))) == 2
    uncalibrated = load_or_build_index(data, "hnsw", **digests)
    assert uncalibrated.origin == "built" and uncalibrated.calibration is None


@pytest.mark.parametrize(
    "bad",
    [{"settings": {"ef_search": -1}}, {"settings": "fast"}, {"settings": {"ef_search": True}}, {"settings": {}},
     {"settings": {"nprobe": 4}}, {"recall": None}, {"k": []}],
)  # fmt: skip
def test_unreadable_stored_settings_mean_a_rebuild(tmp_path, bad, caplog):
    data, queries = clustered(3_000, 32, 100, seed=5)
    digests = {"name": "image", "model": "m", "gallery": "g", "store": IndexStore(tmp_path), "queries": queries}
    built = load_or_build_index(data, "hnsw", **digests)
    manifest_path = next(tmp_path.glob("image-*.json"))
    manifest = json.loads(manifest_path.read_text())
    manifest["search"] = {**manifest["search"], **bad}
    manifest_path.write_text(json.dumps(manifest))
    caplog.set_level(logging.WARNING, logger="vse.serving.index")
    rebuilt = load_or_build_index(data, "hnsw", **digests)
    assert rebuilt.origin == "built" and "unreadable search settings" in caplog.text
    assert rebuilt.calibration == built.calibration  # the same queries choose the same settings again


def test_the_app_calibrates_each_index_on_the_other_modality(tiny_vit, tmp_path):
    """RetrievalService: the image index on caption embeddings, the caption index on image embeddings."""
    from vse import VSEConfig, VSEModel
    from vse.serving.gallery import Gallery, GalleryEmbeddings, GalleryItem
    from vse.serving.retrieval import RetrievalService
    from vse.vocab import vocabulary_from_words

    rows = 2_000
    config = VSEConfig(image_backbone=str(tiny_vit), image_pooling="cls", text_encoder="gru", embed_dim=16, word_dim=4)
    model = VSEModel(config, tokenizer=vocabulary_from_words(["a"])).eval()
    gallery = Gallery([GalleryItem(f"i{i}", b"x", captions=[f"c {i}"]) for i in range(rows)])
    images, captions = clustered(rows, 16, rows, seed=6)
    embeddings = GalleryEmbeddings(torch.from_numpy(images), torch.from_numpy(captions), "m", "g")
    service = RetrievalService(model, "m", gallery, embeddings, "hnsw", IndexStore(tmp_path))
    for index, indexed, served in ((service.image_index, images, captions), (service.caption_index, captions, images)):
        calibration = index.calibration
        assert calibration is not None and calibration.queries == CALIBRATION_QUERIES
        sample = calibration_queries(served)
        kth = exact_search(indexed, sample, 10)[0][:, -1]
        assert recall_at_k(indexed, sample, index.search(sample, 10)[1], kth) == pytest.approx(calibration.recall)


@pytest.fixture
def weak_graphs(monkeypatch):
    """Auto builds HNSW from 100 vectors on, with graphs too sparse (M = 2) to reach RECALL_FLOOR
    at any efSearch tried, as the 1M stand-in set of benchmarks/startup.py does at M = 32."""
    import vse.serving.index as index_module

    monkeypatch.setattr(index_module, "EXACT_MAX", 100)
    monkeypatch.setattr(index_module, "HNSW_NEIGHBOURS", 2)
    monkeypatch.setattr(index_module, "HNSW_BUILD_DEPTH", 4)
    monkeypatch.setattr(index_module, "HNSW_DEPTH_LADDER", (10, 16))


def test_auto_serves_the_compressed_kind_where_the_graph_falls_short(weak_graphs, caplog):
    data, queries = clustered(4_000, 32, 100, seed=5)
    graph = build_index(data, "hnsw", queries=queries)
    compressed = build_index(data, "ivfpq-rerank", queries=queries)
    assert graph.calibration.recall < RECALL_FLOOR < compressed.calibration.recall  # the premise
    caplog.set_level(logging.WARNING, logger="vse.serving.index")
    chosen = build_index(data, "auto", queries=queries)
    assert chosen.kind == "ivfpq-rerank" and chosen.calibration == compressed.calibration
    assert "ivfpq-rerank serves" in caplog.text
    assert build_index(data, "hnsw", queries=queries).kind == "hnsw"  # a kind asked for by name is kept
    assert build_index(data, "auto").kind == "hnsw"  # nothing measured, nothing to compare


def test_a_graph_that_misses_the_floor_but_beats_the_compressed_kind_serves():
    graph = type("Index", (), {"kind": "hnsw", "calibration": Calibration({"ef_search": 1024}, 0.93, 256, 0.97)})()
    worse = type("Index", (), {"kind": "ivfpq-rerank", "calibration": Calibration({"nprobe": 1}, 0.91, 256, 0.97)})()
    better = type("Index", (), {"kind": "ivfpq-rerank", "calibration": Calibration({"nprobe": 2}, 0.96, 256, 0.97)})()
    assert falls_short(graph) and not falls_short(better)
    assert higher_recall(graph, worse) is graph and higher_recall(graph, better) is better


def test_a_good_graph_is_kept_without_building_the_compressed_kind(tmp_path, monkeypatch):
    import vse.serving.index as index_module

    monkeypatch.setattr(index_module, "EXACT_MAX", 100)
    data, queries = clustered(3_000, 32, 100, seed=4)
    store = IndexStore(tmp_path)
    index = load_or_build_index(data, "auto", name="image", model="m", gallery="g", store=store, queries=queries)
    assert index.kind == "hnsw" and index.calibration.recall >= RECALL_FLOOR
    assert [p.name.split("-")[1] for p in tmp_path.glob("*.faiss")] == ["hnsw"]


def test_a_restart_makes_the_same_choice_from_both_stored_indexes(weak_graphs, tmp_path, monkeypatch):
    data, queries = clustered(4_000, 32, 100, seed=5)
    digests = {"name": "image", "model": "m", "gallery": "g", "store": IndexStore(tmp_path), "queries": queries}
    first = load_or_build_index(data, "auto", **digests)
    assert first.kind == "ivfpq-rerank" and first.origin == "built"
    assert sorted(p.name.split("-")[1] for p in tmp_path.glob("*.faiss")) == ["hnsw", "ivfpq"]  # both kept
    import vse.serving.index as index_module

    read = []
    reading = index_module._read_faiss
    monkeypatch.setattr(index_module, "_read_faiss", lambda path: read.append(path.name) or reading(path))
    again = load_or_build_index(data, "auto", **digests)
    assert again.kind == "ivfpq-rerank" and again.origin == "loaded" and again.calibration == first.calibration
    assert np.array_equal(again.search(queries, 10)[1], first.search(queries, 10)[1])
    assert [name.split("-")[1] for name in read] == ["ivfpq"]  # chosen from the manifests: the graph is not read
    compressed = next(tmp_path.glob("image-ivfpq*.faiss"))
    compressed.write_bytes(compressed.read_bytes()[:-100])  # damaged: the graph is read and the other rebuilt
    read.clear()
    rebuilt = load_or_build_index(data, "auto", **digests)
    assert rebuilt.kind == "ivfpq-rerank" and rebuilt.origin == "built" and read and "hnsw" in read[0]
    graph = next(tmp_path.glob("image-hnsw*.faiss"))
    whole = graph.stat().st_size
    graph.write_bytes(graph.read_bytes()[:-100])  # a graph manifest whose file is damaged decides nothing:
    again = load_or_build_index(data, "auto", **digests)  # the graph is rebuilt, then the two compared
    assert again.kind == "ivfpq-rerank" and graph.stat().st_size == whole
