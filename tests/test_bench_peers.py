"""tools/bench_peers.py: the ONNX graphs it exports from transformers' get_*_features, run by ONNX Runtime and
OpenVINO with the bench's session options, give transformers' embeddings at batch and sequence sizes other
than the traced ones (the dynamic axes). Skipped where onnx or a peer is not installed (the bench extra)."""
import sys
from pathlib import Path

import pytest

from conftest import images, max_diff, text_batch, torch_run

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import bench_peers  # noqa: E402


@pytest.fixture(scope="module")
def graphs(tiny, tmp_path_factory):
    pytest.importorskip("onnx")
    _, ref = tiny["base"]
    return bench_peers.export_graphs(ref, tmp_path_factory.mktemp("onnx")), ref


@pytest.mark.parametrize("peer", bench_peers.PEERS)
def test_exported_graphs_match_transformers(graphs, peer):
    pytest.importorskip(peer)
    directory, ref = graphs
    run = {kind: bench_peers.session(peer, directory / f"{kind}.onnx", 2) for kind in bench_peers.GRAPHS}
    cfg = ref.config.to_dict()
    pixels = images(cfg["vision_config"], batch=3)  # traced with 2 images and 2 x 9 tokens
    ids, mask = text_batch(cfg["text_config"], batch=4, seq=13, pad_rows=(1, 3))
    vision = run["vision"]({"pixel_values": pixels})
    text = run["text"]({"input_ids": ids, "attention_mask": mask})
    # observed: ONNX Runtime 4.8e-7 / 6.0e-8, OpenVINO 3.6e-7 / 6.0e-8 (vision / text)
    assert max_diff(vision, torch_run(ref.get_image_features, pixel_values=pixels).pooler_output) < 1e-5
    assert max_diff(text, torch_run(ref.get_text_features, input_ids=ids, attention_mask=mask).pooler_output) < 1e-5
