"""Run by test_distributed.py under ``torchrun``: trains the config's pipeline and, after every
iteration, gathers a SHA-256 of each rank's parameters (they must be identical) and of its
first patch (they must differ). Rank 0 writes ``ddp_report.json`` into the output folder.

    torchrun --nproc-per-node 2 tests/pipelines/ddp_worker.py CONFIG OUTPUT_DIR [overrides...] [resume=CHECKPOINT]
"""

import hashlib
import json
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from medgan.pipelines.registry import build_trainer  # noqa: E402


def digest(tensors) -> str:  # noqa: ANN001
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().float().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def main() -> None:
    config, out, *overrides = sys.argv[1:]
    resume = next((o.split("=", 1)[1] for o in overrides if o.startswith("resume=")), None)
    overrides = [o for o in overrides if not o.startswith("resume=")]
    tr = build_trainer(config, [f"train.output_dir={out}", "train.device=cpu", *overrides], resume=resume, progress=False)
    domain = next(iter(tr.datasets))
    report = {"world_size": tr.dist.world_size, "patches": tr.dist.all_gather(digest([tr.batch(domain, 1)["x"]])), "params": {}}
    step = tr.step

    def checked_step(it: int) -> dict:
        logs = step(it)
        report["params"][it] = tr.dist.all_gather(digest(tr.nets.parameters()))
        return logs

    tr.step = checked_step
    tr.fit()
    if tr.dist.is_main:
        (Path(out) / "ddp_report.json").write_text(json.dumps(report))
    tr.close()


if __name__ == "__main__":
    main()
