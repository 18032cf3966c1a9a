"""MVShop's generative story: the catalogue, its views and query photos, users and sessions.

1. A category tree of ``len(branching)`` levels. Every node has a random direction; a leaf's
   visual prototype is the weighted sum of its ancestors' directions, so products of nearby
   categories look alike.
2. Brands, each with a visual style, a price tier and a few top-level categories it sells in.
3. Look-alike families: one design (a random direction) in a leaf (Zipf-popular leaves), made
   as ``family_size`` products by different brands that sell there, at different prices (leaf
   base price x brand tier x noise). An item's appearance = leaf prototype + family design +
   a little brand style + a little of its own detail, whose first ``style_dims`` coordinates are
   the item's *style*. Look-alikes are close, but not identical.
4. Catalogue views: each item seen ``views_per_item`` times, each view through its own mild
   distortion (a near-identity rotation) plus small noise.
5. Query photos: the pictured product through a *stronger, different* distortion: a larger
   rotation (viewpoint), gain (lighting), background clutter along shared directions, occluded
   coordinates and more noise. This is the multi-view gap OneVision exists to bridge.
6. Users: tastes over top-level categories, a few favourite brands, a preferred price level,
   a preferred style, and how strongly they stick to what they photographed; their profile
   shows an age group (tied to price level) and a region (tied to taste).
7. Sessions: a user photographs a product of a category they like (popular designs more
   often), then weighs it against its look-alikes and clicks one, by their own utility
   (3 x favourite brand + 3 x price fit + 0.5 x style) plus a personal bias towards what they
   photographed (``pictured_bias``). Orders are a utility-dependent subset of clicks.

So the query alone cannot say *which* of several similar products this user picks, and the
history alone cannot say *what* was photographed (tests/test_mvshop.py checks both; on mini,
raw query -> view nearest neighbour finds the pictured product at hit@1 0.59 but the clicked
one at 0.25, history alone finds the pictured product in its top 10 for 1% of sessions, and a
logistic taste model re-ranking the query's top 10 lifts clicked hit@1 from 0.23 to 0.33).
"""
from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class MVShopSpec:
    n_items: int
    n_users: int
    sessions_per_user: float  # mean; each user gets at least 5 (leave-one-out needs history)
    branching: tuple[int, ...]  # children per node, level by level
    n_brands: int
    dim: int = 64
    views_per_item: int = 3
    style_dims: int = 4
    family_size: int = 6  # products sharing one design (look-alikes a user chooses among)
    level_weights: tuple[float, ...] = (1.0, 0.7, 0.5)
    design_weight: float = 0.8
    brand_weight: float = 0.2
    detail_weight: float = 0.3
    view_rotation: float = 0.15  # catalogue views: mild
    view_noise: float = 0.1
    query_rotation: float = 0.6  # query photos: strong, and a different transform
    query_noise: float = 0.4
    query_clutter: float = 0.5
    query_occlusion: float = 0.2  # share of coordinates zeroed
    pictured_bias: tuple[float, float] = (1.0, 1.0)  # mean, sd of a user's extra liking for what they photographed
    taste_strength: float = 2.0  # how sharply utility (taste) decides among the look-alikes
    order_threshold: float = 0.5  # utility at which a click becomes an order half the time


SCALES = {
    "mini": MVShopSpec(n_items=3000, n_users=600, sessions_per_user=12, branching=(4, 3, 3), n_brands=60),
    "small": MVShopSpec(n_items=50_000, n_users=10_000, sessions_per_user=15, branching=(8, 5, 4), n_brands=600),
    "large": MVShopSpec(n_items=1_000_000, n_users=100_000, sessions_per_user=15, branching=(10, 8, 8),
                        n_brands=5000),
}


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _near_identity_rotation(rng: np.random.Generator, dim: int, strength: float) -> np.ndarray:
    """An orthogonal matrix close to the identity (larger ``strength`` -> further away)."""
    q, r = np.linalg.qr(np.eye(dim) + strength / np.sqrt(dim) * rng.standard_normal((dim, dim)))
    return (q * np.sign(np.diag(r))).astype(np.float32)


@dataclasses.dataclass
class Catalogue:
    leaf_of: np.ndarray  # item -> leaf index
    brand_of: np.ndarray
    price: np.ndarray
    appearance: np.ndarray  # (items, dim), unit norm
    style: np.ndarray  # (items, style_dims)
    leaf_paths: list[tuple[int, ...]]  # leaf -> path of child indices from the root
    family_items: list[np.ndarray]  # look-alike family -> its items
    leaf_families: list[np.ndarray]  # leaf -> its families, most popular first
    leaf_base_price: np.ndarray


def make_catalogue(spec: MVShopSpec, rng: np.random.Generator) -> Catalogue:
    paths = [()]
    directions = {}
    for level, fanout in enumerate(spec.branching):
        paths = [p + (c,) for p in paths for c in range(fanout)]
        for p in paths:
            directions[p] = rng.standard_normal(spec.dim).astype(np.float32)
    n_leaves = len(paths)
    weights = spec.level_weights[: len(spec.branching)]
    prototypes = _unit(np.stack([
        sum(w * _unit(directions[path[: d + 1]]) for d, w in enumerate(weights)) for path in paths]))
    top_of_leaf = np.array([p[0] for p in paths])

    brand_style = _unit(rng.standard_normal((spec.n_brands, spec.dim)).astype(np.float32))
    brand_tier = np.exp(rng.normal(0, 0.4, spec.n_brands))
    n_top = spec.branching[0]
    brand_tops = [rng.choice(n_top, size=min(n_top, 1 + rng.poisson(1)), replace=False)
                  for _ in range(spec.n_brands)]
    brands_of_top = [np.array([b for b in range(spec.n_brands) if t in brand_tops[b]]) for t in range(n_top)]
    brands_of_top = [b if len(b) else np.arange(spec.n_brands) for b in brands_of_top]

    # look-alike families: one design made by several brands at several prices
    n_families = -(-spec.n_items // spec.family_size)
    family_of = rng.permutation(np.arange(spec.n_items) // spec.family_size)
    leaf_pop = rng.zipf(1.6, n_leaves).clip(max=50).astype(float)
    family_leaf = rng.choice(n_leaves, size=n_families, p=leaf_pop / leaf_pop.sum())
    leaf_of = family_leaf[family_of]
    leaf_base_price = np.exp(rng.normal(3.0, 0.8, n_leaves))
    u = rng.random(spec.n_items)
    brand_of = np.empty(spec.n_items, dtype=np.int64)
    for t in range(n_top):
        idx = np.flatnonzero(top_of_leaf[leaf_of] == t)
        brand_of[idx] = brands_of_top[t][(u[idx] * len(brands_of_top[t])).astype(int)]
    price = np.round(leaf_base_price[leaf_of] * brand_tier[brand_of] * np.exp(rng.normal(0, 0.25, spec.n_items)), 2)

    design = _unit(rng.standard_normal((n_families, spec.dim)).astype(np.float32))
    detail = _unit(rng.standard_normal((spec.n_items, spec.dim)).astype(np.float32))
    appearance = _unit(prototypes[leaf_of] + spec.design_weight * design[family_of]
                       + spec.brand_weight * brand_style[brand_of] + spec.detail_weight * detail)
    style = detail[:, : spec.style_dims] * np.sqrt(spec.dim)  # about unit variance per coordinate

    family_items = [[] for _ in range(n_families)]
    for item, family in enumerate(family_of):
        family_items[family].append(item)
    family_pop = rng.zipf(1.8, n_families).clip(max=200)
    leaf_families = []
    for leaf in range(n_leaves):
        families = np.flatnonzero(family_leaf == leaf)
        leaf_families.append(families[np.argsort(-family_pop[families], kind="stable")])
    return Catalogue(leaf_of, brand_of, price, appearance, style, paths,
                     [np.array(f) for f in family_items], leaf_families, leaf_base_price)


def catalogue_views(spec: MVShopSpec, cat: Catalogue, rng: np.random.Generator) -> np.ndarray:
    """(items * views_per_item, dim): view k of item i at row i * views_per_item + k."""
    n, v = len(cat.leaf_of), spec.views_per_item
    out = np.empty((n * v, spec.dim), dtype=np.float32)
    for k in range(v):
        rotation = _near_identity_rotation(rng, spec.dim, spec.view_rotation)
        noisy = cat.appearance @ rotation.T + spec.view_noise / np.sqrt(spec.dim) * rng.standard_normal(
            (n, spec.dim)).astype(np.float32)
        out[k::v] = _unit(noisy)
    return out


def query_photos(spec: MVShopSpec, cat: Catalogue, pictured: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One embedding per query: the pictured product through the phone-photo transform."""
    rotation = _near_identity_rotation(rng, spec.dim, spec.query_rotation)
    clutter_basis = _unit(rng.standard_normal((4, spec.dim)).astype(np.float32))
    n = len(pictured)
    x = cat.appearance[pictured] @ rotation.T
    x *= rng.uniform(0.6, 1.4, (n, 1)).astype(np.float32)  # lighting gain
    x += spec.query_clutter * _unit(rng.standard_normal((n, 4)).astype(np.float32)) @ clutter_basis
    x += spec.query_noise / np.sqrt(spec.dim) * rng.standard_normal((n, spec.dim)).astype(np.float32)
    x[rng.random((n, spec.dim)) < spec.query_occlusion] = 0.0
    return _unit(x)


@dataclasses.dataclass
class Users:
    top_taste: np.ndarray  # (users, top categories), rows sum to 1
    favourite_brands: list[np.ndarray]
    price_offset: np.ndarray  # preferred log-price relative to a leaf's base price
    style: np.ndarray  # (users, style_dims)
    pictured_bias: np.ndarray
    age: np.ndarray
    region: np.ndarray


def make_users(spec: MVShopSpec, cat: Catalogue, rng: np.random.Generator) -> Users:
    n, n_top = spec.n_users, spec.branching[0]
    taste = rng.dirichlet(np.full(n_top, 0.3), n)
    # favourite brands are brands the user meets: drawn from the items of the categories they like
    items_of_top = [np.flatnonzero(np.array([cat.leaf_paths[l][0] for l in cat.leaf_of]) == t) for t in range(n_top)]
    favourites = []
    for u in range(n):
        tops = rng.choice(n_top, size=3, p=taste[u])
        favourites.append(np.array([cat.brand_of[rng.choice(items_of_top[t])] if len(items_of_top[t])
                                    else rng.integers(spec.n_brands) for t in tops]))
    price_offset = rng.normal(0, 0.5, n)
    age = np.digitize(price_offset + rng.normal(0, 0.3, n), [-0.6, -0.2, 0.2, 0.6])
    region = np.argmax(taste + rng.gumbel(0, 0.1, taste.shape), axis=1) % 5
    return Users(
        top_taste=taste,
        favourite_brands=favourites,
        price_offset=price_offset,
        style=_unit(rng.standard_normal((n, spec.style_dims))),
        pictured_bias=rng.normal(*spec.pictured_bias, n),
        age=age,
        region=region,
    )


def utility(cat: Catalogue, users: Users, user: int, items: np.ndarray) -> np.ndarray:
    """How much ``user`` likes ``items``: favourite brand, price fit and style match."""
    brand = np.isin(cat.brand_of[items], users.favourite_brands[user]).astype(float)
    wanted = np.log(cat.leaf_base_price[cat.leaf_of[items]]) + users.price_offset[user]
    price_fit = -np.abs(np.log(cat.price[items]) - wanted)
    style = cat.style[items] @ users.style[user]
    return 3.0 * brand + 3.0 * price_fit + 0.5 * style


def make_sessions(spec: MVShopSpec, cat: Catalogue, users: Users, rng: np.random.Generator):
    """Rows (user, pictured, clicked, ordered, timestamp), in time order per user."""
    top_of_leaf = np.array([p[0] for p in cat.leaf_paths])
    leaves_of_top = [np.array([l for l in np.flatnonzero(top_of_leaf == t) if len(cat.leaf_families[l])])
                     for t in range(spec.branching[0])]
    counts = np.maximum(5, rng.poisson(spec.sessions_per_user, spec.n_users))
    from tqdm import tqdm

    rows = []
    for user in tqdm(range(spec.n_users), desc="sessions", unit="user", disable=spec.n_users < 10_000):
        taste = users.top_taste[user] * np.array([len(l) > 0 for l in leaves_of_top])
        times = np.sort(rng.uniform(0, 1000.0, counts[user])).round(3)  # users interleave in time
        for clock in times:
            top = rng.choice(len(taste), p=taste / taste.sum())
            leaf = rng.choice(leaves_of_top[top])
            families = cat.leaf_families[leaf]
            rank = min(int(rng.zipf(1.5)) - 1, len(families) - 1)  # popular designs get photographed more
            family = cat.family_items[families[rank]]
            pictured = rng.choice(family)
            # the user weighs the pictured product against its look-alikes
            options = np.concatenate([[pictured], family[family != pictured]])
            u = utility(cat, users, user, options)
            u[0] += users.pictured_bias[user]
            p = np.exp(spec.taste_strength * (u - u.max()))
            clicked = options[rng.choice(len(options), p=p / p.sum())]
            buy = 1 / (1 + np.exp(-(utility(cat, users, user, np.array([clicked]))[0] - spec.order_threshold)))
            rows.append((user, pictured, clicked, rng.random() < buy, float(clock)))
    return rows
