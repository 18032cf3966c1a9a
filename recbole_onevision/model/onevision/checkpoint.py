"""What a OneVision checkpoint records beside its weights, and the check made on loading it."""
from __future__ import annotations

import torch

FORMAT = 2  # raised whenever the weights' layout or meaning changes; older files are refused
EXTRA = "_extra_state"  # torch's key for a module's get_extra_state()
# settings recorded only when on (checkpoints from before them have none): absent means this
OFF_WHEN_ABSENT = {"item_attributes": False, "item_float_levels": 0, "node_outputs": False}


def extra_state(params, stages: tuple[str, ...], running: str | None) -> dict:
    """``stages``: the training stages these weights finished; ``running``: the one they are in
    the middle of (a best-so-far checkpoint written during a stage), or None."""
    return {"format": FORMAT, "settings": params.trained_settings(), "stages": list(stages), "running": running}


def recorded_settings(state_dict: dict) -> dict:
    """The training settings a checkpoint records (absent optional ones: off); {} if none."""
    saved = state_dict.get(EXTRA)
    if not isinstance(saved, dict) or not isinstance(saved.get("settings"), dict):
        return {}
    return {**OFF_WHEN_ABSENT, **saved["settings"]}


def stages_of(state_dict: dict) -> tuple[str, ...]:
    """The stages a checkpoint's weights finished (none recorded: empty)."""
    saved = state_dict.get(EXTRA)
    return tuple(saved.get("stages") or ()) if isinstance(saved, dict) else ()


def running_stage(state_dict: dict) -> str | None:
    """The stage a checkpoint was written in the middle of (None: written between stages)."""
    saved = state_dict.get(EXTRA)
    return saved.get("running") if isinstance(saved, dict) else None


def mark_finished(state_dict: dict, stage: str) -> None:
    """Record in ``state_dict`` (in place) that its weights finished ``stage``: what a stage's
    best checkpoint says once the stage has ended."""
    saved = state_dict[EXTRA]
    saved["stages"] = [*[s for s in saved.get("stages") or () if s != stage], stage]
    saved["running"] = None


def check(state_dict: dict, params, item_sid: torch.Tensor) -> None:
    """Refuse, with one message saying what differs, a checkpoint of another format, trained
    with other settings (its weights would mean something else) or on other semantic IDs."""
    saved = state_dict.get(EXTRA)
    version = saved.get("format") if isinstance(saved, dict) else None
    if version != FORMAT:
        raise ValueError(f"OneVision checkpoint: format {version or 'unrecorded (written by an earlier version)'}, "
                         f"this version reads format {FORMAT}; train it again with this version")
    ours = {**OFF_WHEN_ABSENT, **params.trained_settings()}
    recorded = recorded_settings(state_dict)
    differ = {k: v for k, v in recorded.items() if ours.get(k) != v}
    differ.update({k: None for k in ours if k not in recorded})
    if differ:
        listed = ", ".join(f"{k}: {v!r} (this run: {ours.get(k)!r})" for k, v in sorted(differ.items()))
        raise ValueError(f"OneVision checkpoint: trained with {listed}; evaluate it with the settings it was "
                         "trained with")
    sid = state_dict.get("codes.item_sid")
    if sid is None or sid.shape != item_sid.shape or not torch.equal(sid.to(item_sid.device), item_sid):
        shape = tuple(sid.shape) if sid is not None else None
        raise ValueError(
            "OneVision checkpoint: it was trained on other semantic IDs than this dataset's "
            f"({shape} vs {tuple(item_sid.shape)} items x levels, or other codes). Load it with the config it "
            "was trained with (vrq_* keys, seed) and the same VRQ cache; SIDs fitted on a GPU can differ "
            "from run to run.")
