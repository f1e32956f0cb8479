"""``predict`` / ``export-model``: use a trained checkpoint outside the pipeline."""

from __future__ import annotations

from pathlib import Path

import click

from pointparse.cache import StageCache

from .options import cache_option, friendly, quiet_option


def _checkpoint_path(ref: str, cache_dir) -> Path:
    """A .pt file, a folder holding model.pt, or a train cache key → the model.pt path."""
    # torch: these commands load it when they run, not when the CLI starts (cli/main.py)
    from pointparse.predictor import resolve_checkpoint

    return resolve_checkpoint(ref, StageCache(cache_dir))


@click.command("predict")
@click.argument("checkpoint")
@click.argument("inputs", nargs=-1, required=True)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for <name>.png (class ids) and <name>_overlay.jpg.")
@click.option("--batch-size", default=4, show_default=True, type=int)
@click.option("--flip", is_flag=True, help="Average with the horizontally flipped image.")
@click.option("--scales", default="1", show_default=True, help="Comma-separated test scales, e.g. 0.75,1,1.25.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N")
@click.option("--amp", type=click.Choice(["auto", "off", "bf16", "fp16"]), default="auto", show_default=True)
@cache_option
@quiet_option
@friendly
def predict_cmd(checkpoint, inputs, out_dir, batch_size, flip, scales, device, amp, cache_dir, quiet):
    """Segment INPUTS (image files or folders) with CHECKPOINT (model.pt, train artefact folder or key).

    Unreadable inputs are reported and skipped; the exit code is non-zero when any was skipped.
    """
    from pointparse.predict import predict

    res = predict(_checkpoint_path(checkpoint, cache_dir), inputs, out_dir, batch_size=batch_size, flip=flip,
                  scales=scales, device=device, amp=amp, progress=not quiet,
                  cache_root=StageCache(cache_dir).root)
    click.echo(f"predict: wrote {len(res.written)} label map(s) and overlays to {out_dir}")
    if res.failures:
        listed = "\n".join(f"  {p}: {problem}" for p, problem in res.failures)
        raise click.ClickException(f"{len(res.failures)} input(s) skipped:\n{listed}")


@click.command("export-model")
@click.argument("checkpoint")
@click.option("--format", "fmt", type=click.Choice(["pt2", "onnx"]), default="pt2", show_default=True)
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--height", default=512, show_default=True, type=int, help="Example input height.")
@click.option("--width", default=512, show_default=True, type=int, help="Example input width.")
@click.option("--static", is_flag=True, help="Fix the input shape to [2, 3, height, width] (default: dynamic).")
@cache_option
@friendly
def export_model_cmd(checkpoint, fmt, out_path, height, width, static, cache_dir):
    """Export CHECKPOINT as a torch.export program (.pt2) or ONNX: normalised image -> logits."""
    from pointparse.export import export_model

    res = export_model(_checkpoint_path(checkpoint, cache_dir), fmt, out_path, height=height, width=width,
                       dynamic=not static)
    shape = "dynamic batch/height/width" if res.dynamic else f"static shape {list(res.input_shape)}"
    click.echo(f"export-model: wrote {fmt} ({shape}) to {out_path}")
