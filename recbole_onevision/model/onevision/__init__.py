"""OneVision, one concept per module: :mod:`.model` (RecBole's contract), :mod:`.params` (the
resolved settings), :mod:`.codes` (the SID vocabulary), :mod:`.inputs` (the encoder and what it
reads), :mod:`.decoder` (the SID decoder and its likelihood), :mod:`.beam_search`,
:mod:`.visual_bias`, :mod:`.dense_head`, :mod:`.objectives` (the stages' losses) and
:mod:`.checkpoint` (what a checkpoint records)."""
from recbole_onevision.model.onevision.model import OneVision

__all__ = ["OneVision"]
