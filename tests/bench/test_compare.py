"""The project's rows beside the peer's: the right pairs, the speed-up the right way round, missing rows shown."""

from __future__ import annotations

import json

from cme_vlm.bench.compare import comparison, peer_results, table


def test_pairs_rows_and_prints_the_speed_up(tmp_path):
    peer = tmp_path / "peer.txt"
    peer.write_text("\n".join([
        "RESULT " + json.dumps({"stage": "sft", "mode": "full", "tokens_per_s": 5000.0}),
        "RESULT " + json.dumps({"batch": 1, "gen_tokens_per_s": 10.0, "seconds": 20.0}),
        "RESULT " + json.dumps({"batch": 32, "gen_tokens_per_s": 336.0, "seconds": 19.0}),
        'RESULT {"batch": 8, "gen_tok',  # torn by a time limit
    ]))
    report = {"rows": [
        {"row": "sft", "status": "ok", "tokens_per_s": 10000.0},
        {"row": "dpo", "status": "failed", "error": "CUDA error"},
        {"row": "explain bs=1 (greedy)", "status": "ok", "step_time_s": 2.0},
        {"row": "generate bs=32", "status": "ok", "tokens_per_s": 3360.0},
    ]}
    lines = comparison(report, peer_results(peer))
    assert lines == [("sft tokens/s", 10000.0, 5000.0), ("explain bs=1 seconds (lower is better)", 2.0, 20.0),
                     ("generate bs=1 tokens/s", None, 10.0), ("generate bs=32 tokens/s", 3360.0, 336.0)]
    printed = table(lines).splitlines()
    assert printed[1].split()[-1] == "2.00x" and printed[2].split()[-1] == "10.00x"  # seconds: peer over project
    assert "missing" in printed[3] and printed[4].split()[-1] == "10.00x"
