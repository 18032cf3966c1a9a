"""Who is searching: the user's profile and latest history, as the evaluator's rows hold them.

A user of the dataset gets their most recent ``MAX_ITEM_LIST_LENGTH`` items (everything the
dataset has of them, in time order) and their profile; a history given as item ids replaces
theirs (behaviours default to ``click``, else the behaviour field's first token). An unknown
user, or none, gets photo-only search: no profile, an empty history (as ``empty_history_rows``
gives a session's first query in training and evaluation).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from recbole.data.interaction import Interaction

from recbole_onevision.search.errors import SearchError


@dataclass(frozen=True)
class Row:
    user: int  # internal id, 0 = unknown
    items: list[int]  # internal ids, oldest first
    behaviours: list[int]
    user_known: bool
    personalised: bool


class UserHistories:
    def __init__(self, config, dataset):
        self.dataset = dataset
        self.uid, self.iid = dataset.uid_field, dataset.iid_field
        self.item_seq = self.iid + config["LIST_SUFFIX"]
        self.item_seq_len = config["ITEM_LIST_LENGTH_FIELD"]
        self.max_len = int(config["MAX_ITEM_LIST_LENGTH"])
        self.query_field = config["QUERY_ID_FIELD"] or "query_id"
        behaviour = config["BEHAVIOUR_FIELD"] or "behaviour"
        self.behaviour = behaviour if behaviour in dataset.field2type else None
        self.user_ids = dataset.field2token_id[self.uid]
        self.item_ids = dataset.field2token_id[self.iid]
        self.behaviour_ids = dataset.field2token_id[self.behaviour] if self.behaviour else {}
        self.default_behaviour = self.behaviour_ids.get("click", 1) if self.behaviour else 0
        self._latest = self._latest_rows()

    def _latest_rows(self) -> dict[int, int]:
        """user -> the row of their latest interaction (its history + its item = all of theirs)."""
        inter = self.dataset.inter_feat
        users = inter[self.uid].tolist()
        time_field = self.dataset.time_field
        times = inter[time_field].tolist() if time_field in inter else list(range(len(users)))
        latest: dict[int, int] = {}
        for row, (user, time) in enumerate(zip(users, times)):
            if user not in latest or time >= times[latest[user]]:
                latest[user] = row
        return latest

    def sample_users(self, n: int) -> list[str]:
        """The first ``n`` users with a history (for a page's user picker)."""
        tokens = self.dataset.field2id_token[self.uid]
        return [str(tokens[u]) for u in sorted(self._latest)[:n] if u]

    def check(self, user, history, behaviours, where: str = "") -> None:
        if user is not None and not isinstance(user, str):
            raise SearchError(f"{where}user: expected an id (text), got {user!r}", 422)
        if history is None:
            if behaviours is not None:
                raise SearchError(f"{where}behaviours: given without a history", 422)
            return
        if not isinstance(history, (list, tuple)) or not all(isinstance(i, str) for i in history):
            raise SearchError(f"{where}history: expected a list of item ids (text)", 422)
        unknown = next((i for i in history if self.item_ids.get(i, 0) == 0), None)
        if unknown is not None:
            raise SearchError(f"{where}history: item {unknown!r} is not in the catalogue", 404)
        if behaviours is not None:
            if not self.behaviour:
                raise SearchError(f"{where}behaviours: this dataset has no behaviour field", 422)
            if not isinstance(behaviours, (list, tuple)) or len(behaviours) != len(history):
                raise SearchError(f"{where}behaviours: expected one per history item ({len(history)})", 422)
            bad = next((b for b in behaviours if not isinstance(b, str) or self.behaviour_ids.get(b, 0) == 0), None)
            if bad is not None:
                known = ", ".join(list(self.behaviour_ids)[1:])
                raise SearchError(f"{where}behaviours: {bad!r} is not one of {known}", 422)

    def row(self, user: str | None, history: list[str] | None, behaviours: list[str] | None) -> Row:
        uid = self.user_ids.get(user, 0) if user is not None else 0
        if history is not None:
            items = [self.item_ids[i] for i in history]
            kinds = ([self.behaviour_ids[b] for b in behaviours] if behaviours is not None
                     else [self.default_behaviour] * len(items))
        elif uid in self._latest:
            items, kinds = self._of_user(self._latest[uid])
        else:
            items, kinds = [], []
        items, kinds = items[-self.max_len:], kinds[-self.max_len:]
        return Row(uid, items, kinds, uid != 0, uid != 0 or bool(items))

    def _of_user(self, row: int) -> tuple[list[int], list[int]]:
        inter = self.dataset.inter_feat
        length = int(inter[self.item_seq_len][row])
        items = inter[self.item_seq][row][:length].tolist() + [int(inter[self.iid][row])]
        kinds = [0] * len(items)
        if self.behaviour:
            kinds = inter[self.behaviour + "_list"][row][:length].tolist() + [int(inter[self.behaviour][row])]
        keep = [n for n, item in enumerate(items) if item]  # an empty_history_rows row's padding
        return [items[n] for n in keep], [kinds[n] for n in keep]

    def interaction(self, rows: list[Row], device) -> Interaction:
        """The rows as the evaluator builds them: query ids 1..len(rows) (the photos search
        puts in the model's photo table), histories left-aligned, profile joined."""
        seq = torch.zeros(len(rows), self.max_len, dtype=torch.long)
        kinds = torch.zeros_like(seq)
        for n, row in enumerate(rows):
            seq[n, :len(row.items)] = torch.tensor(row.items, dtype=torch.long)
            kinds[n, :len(row.behaviours)] = torch.tensor(row.behaviours, dtype=torch.long)
        fields = {
            self.uid: torch.tensor([row.user for row in rows]),
            self.item_seq: seq,
            # an empty history is the padding item with length 1, as empty_history_rows makes it
            self.item_seq_len: torch.tensor([max(len(row.items), 1) for row in rows]),
            self.query_field: torch.arange(1, len(rows) + 1),
        }
        if self.behaviour:
            fields[self.behaviour + "_list"] = kinds
        return self.dataset.join(Interaction(fields)).to(device)
