"""CLI: ``thaldask train`` and ``thaldask model-card`` (making the built-in model)."""

from __future__ import annotations

import click

from thaldask._click import fail, handle_errors

__all__ = ["COMMANDS"]


@click.command("train")
@click.option("--label-maps", type=click.Path(file_okay=False), default=None,
              help="Folder of label maps (FreeSurfer labels, thalamus 10/49) for domain randomisation.")
@click.option("--manifest", type=click.Path(dir_okay=False), default=None,
              help="Fine-tune on your own images with ground truth (manifest with image and gt rows).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder (resumable).")
@click.option("--steps", default=None, type=int,
              help="Training steps (default: the shipped recipe's 2000; fine-tuning 300).")
@click.option("--seed", default=0, show_default=True)
@click.option("--init", type=click.Path(dir_okay=False), default=None,
              help="Start from these weights (default for --manifest: the shipped ones).")
@click.option("--threads", default=1, show_default=True,
              help="torch threads (the shipped weights were trained with 1).")
@click.option("--lr", type=float, default=None,
              help="Peak learning rate (default: 1e-3 from label maps, 2e-4 fine-tuning).")
@click.option("--pv-supersample", type=int, default=None,
              help="Render the ROI samples this many times finer and average (partial volume); "
                   "targets become class fractions.")
@click.option("--stop-after", type=int, default=None,
              help="Checkpoint and stop after this many steps; the same command resumes.")
@click.option("--device", default="auto", show_default=True,
              help="auto (CUDA when available), cpu or cuda; the shipped weights are reproduced on cpu.")
@handle_errors
def train_command(label_maps, manifest, out, steps, seed, init, threads, lr, pv_supersample, stop_after,
                  device):
    """Train the built-in thalnet model (reproduces the shipped weights) or fine-tune it."""
    if bool(label_maps) == bool(manifest):
        fail("give exactly one of --label-maps DIR or --manifest FILE")
    from thaldask.thalnet import train  # torch loads here, not when the CLI starts

    log = lambda m: click.echo(m, err=True)  # noqa: E731
    if label_maps:
        cfg = train.TrainConfig(steps=steps or train.TrainConfig.steps, seed=seed, threads=threads,
                                lr=lr or train.TrainConfig.lr)
        if pv_supersample and pv_supersample > 1:
            cfg.augmentation["pv_supersample"] = int(pv_supersample)
        res = train.train_model(label_maps, out, cfg, init=init, log=log, stop_after=stop_after,
                                device=device)
        if res["stopped"]:
            click.echo(f"stopped after step {res['steps']}; run the same command to resume")
            return
    else:
        if stop_after is not None:
            fail("--stop-after applies to training from --label-maps")
        res = train.finetune_manifest(manifest, out, steps=steps or 300, seed=seed, init=init,
                                      threads=threads, log=log, device=device, lr=lr or 2e-4)
    click.echo(f"weights: {res['weights']}\nsha256: {res['sha256']}")


@click.command("model-card")
@click.argument("weights", type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Folder for thalnet.pt, thalnet.json and thalnet.md (may be the weights' own).")
@click.option("--label-maps", type=click.Path(file_okay=False), default=None,
              help="Folder with the held-out label maps: full-pipeline Dice goes in the card.")
@click.option("--heldout-json", type=click.Path(dir_okay=False), default=None,
              help="Reuse held-out results written by an earlier run (OUT/thalnet.heldout.json).")
@click.option("--notes", default="", help="Free text for the card's training section.")
@click.option("--overwrite", is_flag=True, help="Replace other weights already in OUT.")
@handle_errors
def model_card_command(weights, out, label_maps, heldout_json, notes, overwrite):
    """Write WEIGHTS with their model card into OUT (load them with --option weights=OUT/thalnet.pt)."""
    import json
    from pathlib import Path

    from thaldask.thalnet import card  # torch loads here, not when the CLI starts

    heldout = None
    if heldout_json:
        heldout = json.loads(Path(heldout_json).read_text())
    elif label_maps:
        import torch

        torch.set_num_threads(1)
        meta = torch.load(weights, map_location="cpu", weights_only=True)["meta"]
        heldout = card.heldout_dice(weights, label_maps, meta["held_out"],
                                    log=lambda m: click.echo(m, err=True))
    written = card.write_model_card(weights, out, heldout=heldout, notes=notes, overwrite=overwrite)
    click.echo(json.dumps({k: written[k] for k in ("sha256", "size_bytes")}))


COMMANDS = [train_command, model_card_command]
