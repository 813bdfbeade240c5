"""The typed sections of params.yaml: one model per section, every field required.

params.yaml is the one source of the pipeline's values: these models say which keys exist, their
types and their bounds, never a default (tests/code/test_config.py checks it). An unknown or
misspelled key is an error (`extra="forbid"` at every level), and so is a missing one.
`pipelines.core.config.Settings` puts them together; the modules that use a section import its
model from here. Benchmark-only settings are not here: they live in benchmarks/params.yaml, typed by
their benchmark's own models.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

BaseSource = Literal["sample", "home-depot", "rechorus", "sequences"]  # a source of all three tables
Source = Literal[BaseSource, "stream"]  # stream: a base source plus the stream sink's events
Device = Literal["auto", "cuda", "cpu"]
DistanceMethod = Literal["wasserstein", "jensenshannon", "psi", "kl_div", "hellinger", "ed"]
# The columns the monitor builds from the canonical tables (pipelines/stages/monitor.py): events, then queries.
MONITORED_COLUMNS = ("department", "event_type", "price", "n_tokens", "n_chars", "oov_rate")


class Section(BaseModel):
    """A section or subsection of params.yaml: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------- data

class IngestParams(Section):
    source: Source
    path: str | None  # folder or file of a real dataset (not used by sample); for stream, the sink folder
    stream_base: BaseSource  # source stream: the source whose three tables the sink's events are added to
    stream_base_path: str | None  # that source's folder or file (null: its default path; sample needs none)


class SampleParams(Section):
    seed: int
    n_items: int = Field(ge=20)
    n_users: int = Field(ge=10)
    n_queries: int = Field(ge=10)
    days: int = Field(ge=1)
    start_date: str
    defect_rate: float = Field(ge=0.0, le=0.5)


class ValidateParams(Section):
    max_bad_fraction: float = Field(ge=0.0, le=1.0)
    max_price: float = Field(gt=0)


class CleanParams(Section):
    session_gap_minutes: int = Field(ge=1)
    near_duplicates: bool


class PrivacyParams(Section):
    key_env: str
    key_file: str


class FeaturesParams(Section):
    event_weights: dict[str, float]
    valid_days: int = Field(ge=1)  # interactions of the last test_days are held out for evaluation,
    test_days: int = Field(ge=1)  # the valid_days before them for fitting the fusion
    query_valid_fraction: float = Field(ge=0.0, lt=1.0)
    query_test_fraction: float = Field(gt=0.0, lt=1.0)
    # how interactions are held out: time (the last test_days, the valid_days before them), leave_one_out
    # (each user's last interaction is test, the one before valid; users with fewer than 3 stay train), or
    # given (the source's holdout table names the held-out events and their candidates)
    interaction_split: Literal["time", "leave_one_out", "given"]
    seed: int


# ---------------------------------------------------------------- recall components

class BM25Params(Section):
    k1: float
    b: float
    method: str  # robertson | atire | bm25l | bm25+ | lucene
    stemming: bool
    stopwords: bool
    measures: bool  # fractions, sizes and units written one way ("1/2 in." = "0.5 inch": models/measures.py)
    field: str  # texts | titles: which Items field is indexed


class DenseParams(Section):
    model_path: str | None  # a sentence-transformers folder; None = the packaged MiniLM
    field: str  # texts | titles: which Items field is embedded
    batch_size: int = Field(ge=1)
    max_seq_length: int = Field(ge=1)
    ann_threshold: int = Field(ge=1)  # catalogs of at least this many items get an HNSW index
    hnsw_m: int = Field(ge=2)
    hnsw_ef_search: int = Field(ge=1)
    history_items: int = Field(ge=1)  # how many of the latest history items make a user's vector
    recency_decay: float  # weight of a history item = decay ** (its age in steps)
    device: str


class CrossEncoderParams(Section):
    model_path: str | None  # a folder written by train_cross_encoder; None = untrained MiniLM head
    field: str  # texts | titles
    batch_size: int = Field(ge=1)
    max_seq_length: int = Field(ge=1)
    device: str


class SpellingParams(Section):
    """Query spelling correction from the catalog's words (pipelines/models/spelling.py): BM25's queries, the
    search stack's title features and evaluate's corrected-query slice use it."""

    enabled: bool
    max_edit_distance: int = Field(ge=1, le=3)  # edits from an unknown word to its correction (1 for <= 5 letters)
    min_word_length: int = Field(ge=2)  # shorter unknown words are kept as typed


class TextParams(Section):
    spelling: SpellingParams
    bm25: BM25Params
    dense: DenseParams
    cross_encoder: CrossEncoderParams


class PopularityParams(Section):
    half_life_days: float | None = Field(gt=0)  # null: no time decay
    event_weights: dict[str, float]


class ItemCFParams(Section):
    window: int | None = Field(ge=1)  # null: the whole history co-occurs
    distance_decay: float = Field(gt=0, le=1)  # pair weight decay^(steps apart - 1)
    user_damping: float = Field(ge=0)  # each user's pairs weighted by 1 / len(history)^damping
    neighbors: int = Field(ge=1)  # most similar items kept per item
    history_decay: float = Field(gt=0, le=1)  # the newest history item weighs 1, the one before decay, ...
    max_history: int = Field(ge=1)
    popularity_blend: float = Field(ge=0)  # popularity (scaled to [0, 1]) added: cold start and ties


class RecallParams(Section):
    popularity: PopularityParams
    itemcf: ItemCFParams


class RelationsParams(Section):
    history_items: int = Field(ge=1)  # latest history items that count
    recency_decay: float = Field(gt=0, le=1)
    # weight of each kind of relation in the score; a kind absent from the data contributes nothing
    weights: dict[str, float]


class SASRecParams(Section):
    hidden: int = Field(ge=8)
    layers: int = Field(ge=1)
    heads: int = Field(ge=1)
    inner: int = Field(ge=8)  # feed-forward width
    max_len: int = Field(ge=2)
    dropout: float = Field(ge=0, lt=1)
    lr: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    batch: int = Field(ge=1)
    epochs: int = Field(ge=1)
    patience: int = Field(ge=1)
    # share of the users (seeded) whose last training item is held out for early stopping when fit gets no
    # validation: the others train on their whole sequence (1.0: every user with three or more items)
    validation_fraction: float = Field(gt=0, le=1)
    loss: Literal["ce", "sampled"]
    negatives: int = Field(ge=1)  # shared negatives per batch for the sampled softmax
    seed: int
    threads: int = Field(ge=1)
    device: Device
    eval_batch: int = Field(ge=1)
    checkpoint_dir: str | None  # null: no checkpoints


# ---------------------------------------------------------------- training

class LoraParams(Section):
    enabled: bool
    r: int = Field(ge=1)
    alpha: int
    dropout: float = Field(ge=0.0, lt=1.0)


class LoopParams(Section):
    """One training loop's budget and optimizer."""

    epochs: float = Field(gt=0)
    max_steps: int | None = Field(ge=1)  # overrides epochs when set
    batch_size: int = Field(ge=2)
    lr: float = Field(gt=0)
    warmup_ratio: float = Field(ge=0, lt=1)
    weight_decay: float = Field(ge=0)
    max_seq_length: int = Field(ge=8)


class FinetuneParams(Section):
    bi_encoder: LoopParams
    cross_encoder: LoopParams
    lora: LoraParams
    hard_negatives: int = Field(ge=0, le=1)  # mined negatives per pair (0 = in-batch only)
    hard_negative_depth: int = Field(ge=2)  # mine among the BM25 top this many
    cross_encoder_negatives: int = Field(ge=0)  # unjudged BM25 items per judged pair, gain 0
    min_positive_relevance: float  # judged pairs at least this relevant are bi-encoder positives
    recommend_history_items: int = Field(ge=1)  # latest history items whose text is a recommendation anchor
    max_recommend_pairs: int = Field(ge=0)  # (history -> next item) pairs sampled for the stage; 0 = none
    mnrl_scale: float = Field(gt=0)  # inverse temperature of the contrastive loss
    freeze_embeddings: bool  # keep the word-embedding table fixed: most weights, a large share of CPU time
    seed: int
    device: str  # auto | cuda | cpu
    checkpoint_every: int = Field(ge=1)
    checkpoint_dir: str | None  # the finetune stage's resumable work; null = a temporary folder
    resume: bool
    log_every: int = Field(ge=1)


class DistillParams(Section):
    layers: list[int]  # teacher layers the student keeps, in order (the last one matters most)
    steps: int = Field(ge=1)
    batch_size: int = Field(ge=2)
    lr: float = Field(gt=0)
    warmup_ratio: float = Field(ge=0, lt=1)
    weight_decay: float = Field(ge=0)
    loss: str = Field(pattern="^(cosine|mse)$")
    rank_weight: float = Field(ge=0)  # weight of the ranking term: KL of teacher and student scores over items
    rank_items: int = Field(ge=1)  # teacher item embeddings sampled each step for the ranking term
    rank_hard_items: int = Field(ge=0)  # plus each batch text's top items by teacher score: the head NDCG sees
    rank_temperature: float = Field(gt=0)
    max_seq_length: int = Field(ge=4)  # of the student, in training and serving
    item_fields: list[str]  # item table columns (title, text) whose values join the training pool
    max_item_texts: int = Field(ge=0)  # catalog texts sampled into the training pool
    freeze_embeddings: bool  # the word-embedding table (most weights) stays the teacher's: faster steps
    teacher_batch_size: int = Field(ge=1)
    quantize: bool  # int8 dynamic quantization of nn.Linear at load
    quantize_per_channel: bool  # an int8 scale per output row of each weight, not one per matrix: closer
    fp32_linears: int = Field(ge=0)  # this many linears stay fp32: those int8 harms most (calibration_texts)
    calibration_texts: int = Field(ge=1)  # training texts on which that harm is measured
    trace: bool  # TorchScript trace at load: removes most per-request Python overhead
    seed: int
    threads: int = Field(ge=1)  # torch threads while training
    device: str  # auto | cuda | cpu
    eval_split: str = Field(pattern="^(train|valid)$")  # NDCG and speed measured on these queries
    timing_queries: int = Field(ge=1)  # queries timed one by one at batch size 1
    timing_repeats: int = Field(ge=1)


# ---------------------------------------------------------------- fusion and ranking

class BoostedTreesParams(Section):
    """What every LightGBM model of the fusions shares."""

    n_estimators: int = Field(ge=1)
    learning_rate: float = Field(gt=0)
    num_leaves: int = Field(ge=2)
    min_child_samples: int = Field(ge=1)
    feature_fraction: float = Field(gt=0, le=1)
    bagging_fraction: float = Field(gt=0, le=1)
    lambda_l2: float = Field(ge=0)
    n_jobs: int = Field(ge=1)


class LambdaRankParams(BoostedTreesParams):
    bagging_freq: int = Field(ge=0)
    cv_folds: int = Field(ge=1)  # trees = the best mean held-out NDCG over these folds of the requests (1: n_estimators)
    cv_max_requests: int = Field(ge=2)  # the folds are drawn from a seeded sample of at most this many requests
    label_resolution: int = Field(ge=1)  # graded gains are rounded to 1/label_resolution steps


class RelevanceParams(BoostedTreesParams):
    """The graded relevance regressor (search)."""


class FusionParams(Section):
    folds: int = Field(ge=2)
    metric_k: int = Field(ge=1)
    normalizations: list[str]  # zscore | minmax | rank (pipelines.ranking.fusion.NORMALIZATIONS)
    weight_grid: list[float]
    rounds: int = Field(ge=1)
    rrf_k: int = Field(ge=1)
    lambdarank: LambdaRankParams
    relevance: RelevanceParams


class SliceParams(Section):
    """The slices of the held-out requests evaluate reports each method on (pipelines/ranking/slices.py)."""

    cold_user_max_history: int = Field(ge=0)  # recommend: a user with at most this many earlier events is cold
    cold_item_max_events: int = Field(ge=0)  # recommend: a target with at most this many train events is cold
    head_query_min_searches: int = Field(ge=1)  # search: a query text searched at least this often is head
    long_query_min_tokens: int = Field(ge=1)  # search: a query of at least this many words is long


class RankingParams(Section):
    """Which components serve each task, and how the fused ranking pools candidates."""

    search_components: list[str]
    search_reranker: str | None  # re-ranks the fused search top (evaluate only); None = no re-ranking
    rerank_depth: int = Field(ge=1)  # fused candidates per query the re-ranker re-orders
    title_features: bool  # the search stack also learns how each candidate's title matches the query
    history_features: bool  # the recommend stack also learns how each candidate relates to the user's last items
    recommend_components: list[str]
    candidates_per_component: int = Field(ge=1)
    eval_ks: list[int]
    slices: SliceParams


# ---------------------------------------------------------------- feedback

class RewardParams(Section):
    """A served slot's reward: the sum of the weights of the events it got (a purchase follows a cart and a click)."""

    click: float
    add_to_cart: float
    purchase: float


class ExplorationParams(Section):
    slate_size: int = Field(ge=1)  # slots served
    top_m: int = Field(ge=1)  # only the fused top-M may be served
    max_shift: int = Field(ge=0)  # no item moves more than this many slots away from its fused rank
    epsilon: float = Field(ge=0.0, le=1.0)  # slate-level: share of slates built by uniform exploration


class PolicyParams(Section):
    ridge: float = Field(gt=0)  # prior precision of the linear reward model
    alpha: float = Field(ge=0)  # LinUCB bonus width
    thompson_scale: float = Field(gt=0)  # posterior standard deviation multiplier
    thompson_samples: int = Field(ge=10)  # Monte Carlo draws for Thompson propensities
    greedy_epsilon: float = Field(ge=0.0, le=1.0)  # exploration of the epsilon-greedy baseline
    # approximate examination of slot s: known position bias the linear model divides out
    position_bias: float = Field(ge=0)  # weight of slot s = 1 / (1 + s) ** position_bias
    save_every_updates: int = Field(ge=1)
    save_every_seconds: float = Field(gt=0)


class SimulatorParams(Section):
    candidates: int = Field(ge=2)  # K: fused candidates per request
    component_pool: int = Field(ge=1)  # each component's top-N pooled before fusing
    fusion_weights: dict[str, float]
    normalization: str
    examination_power: float = Field(ge=0)  # P(examine slot s) = 1 / (1 + s) ** power
    attraction_true: float = Field(ge=0, le=1)  # the user's real next items
    attraction_related: float = Field(ge=0, le=1)  # complement / substitute of a next item
    attraction_category: float = Field(ge=0, le=1)  # same category as a next item
    attraction_other: float = Field(ge=0, le=1)
    cart_given_click: float = Field(ge=0, le=1)
    purchase_given_cart: float = Field(ge=0, le=1)


class ReinforceParams(Section):
    steps: int = Field(ge=1)
    batch: int = Field(ge=1)  # logged impressions a gradient step
    learning_rate: float = Field(gt=0)
    weight_clip: float = Field(gt=0)  # importance weights capped (variance for a little bias)
    l2: float = Field(ge=0)
    logging_epsilon: float = Field(ge=0, le=1)  # exploration of the static logging policy
    seed: int


class FeedbackParams(Section):
    rewards: RewardParams
    exploration: ExplorationParams
    policy: PolicyParams
    simulator: SimulatorParams
    reinforce: ReinforceParams


class StreamParams(Section):
    """params.yaml `stream:`: the behaviour stream (pipelines/feedback/stream.py) and its online state
    (pipelines/feedback/live_state.py)."""

    prefix: str = Field(min_length=1)  # every Redis key of the stream and the state starts with it
    max_batch: int = Field(ge=1, le=500)  # events one POST /events may carry (its schema allows at most 500)
    max_body_bytes: int = Field(ge=1024)  # a POST /events body may be this large (other calls: serving.max_body_bytes)
    maxlen: int = Field(ge=1000)  # the stream is trimmed to about this many entries (MAXLEN ~)
    batch: int = Field(ge=1)  # entries a processor reads and applies a round trip
    block_ms: int = Field(ge=1)  # an idle processor waits this long for entries (and sees a stop as soon)
    claim_idle_ms: int = Field(ge=1)  # an entry pending this long (its processor died) is claimed by another
    history_size: int = Field(ge=1)  # latest events kept per user
    history_ttl_seconds: int = Field(ge=1)  # a user's history expires this long after their last event
    windows_seconds: list[int] = Field(min_length=1)  # item counters over these sliding windows
    window_buckets: int = Field(ge=1)  # each window summed over this many buckets (it slides by one)
    co_items: int = Field(ge=0)  # an event pairs with this many events of its session nearest in time (0: none)
    co_neighbors: int = Field(ge=1)  # most co-occurring items kept per item
    # an applied event id is remembered this long: a re-delivery within it changes nothing (pending entries are
    # re-delivered within claim_idle_ms, a duplicate publication within minutes)
    seen_ttl_seconds: int = Field(ge=1)
    # the Parquet sink of applied events (pipelines/feedback/sink.py) that `ingest --source stream` reads;
    # null or empty: no sink, and nothing is queued for one
    sink_path: str | None
    sink_flush_events: int = Field(ge=1)  # a drain writes at most this many events; a queue this long is drained
    sink_flush_seconds: float = Field(gt=0)  # else the queue is drained this long after the last drain
    # each worker reads the catalog stream's version this often (POST /items: a new product is searchable after
    # about this long plus its encoding)
    catalog_poll_ms: int = Field(ge=10)
    # intake (POST /events, /items) and the catalog follower wait this long for Redis: no answer waits on them, and
    # the request path's short serving.cache.redis_timeout_ms would read a busy machine as an outage
    intake_timeout_ms: int = Field(ge=1)
    metrics_port: int = Field(ge=0, le=65535)  # a processor's Prometheus metrics (stream_metrics.py); 0: not served
    # each worker adds the live counters since its bundle was built to the popularity this often (0: never)
    popularity_refresh_seconds: float = Field(ge=0)

    @field_validator("windows_seconds")
    @classmethod
    def _positive_windows(cls, windows: list[int]) -> list[int]:
        if any(window <= 0 for window in windows):
            raise ValueError("every window must be positive")
        return windows

    @model_validator(mode="after")
    def _windows_split_into_buckets(self) -> "StreamParams":
        uneven = [window for window in self.windows_seconds if window % self.window_buckets]
        if uneven:
            raise ValueError(f"windows_seconds {uneven} are not multiples of window_buckets ({self.window_buckets})")
        return self


# ---------------------------------------------------------------- operations

class OrchestrationParams(Section):
    """params.yaml `orchestration:` section."""

    schedule: str | None  # the training DAG's schedule (cron or preset); null = manual only
    start_date: str
    retries: int = Field(ge=0)
    retry_delay_seconds: float = Field(gt=0)
    retry_backoff: float = Field(ge=0)  # multiplier: 60 s, 120 s, 240 s ... (0 = constant delay)
    max_retry_delay_seconds: float = Field(gt=0)
    push: bool  # `dvc push <stage>` after each stage (to the default remote)


class PromotionParams(Section):
    """params.yaml `promotion:` section."""

    registry: str
    bento_info: str
    metrics: list[str] = Field(min_length=1)
    tolerance: float = Field(ge=0)  # absolute: a candidate may be this much below the current one


class DriftCheck(Section):
    method: DistanceMethod
    threshold: float = Field(gt=0)


class MonitorParams(Section):
    """params.yaml `monitor:` section."""

    schedule: str | None
    window_days: int = Field(ge=1)  # the latest days of current events and queries
    reference: str  # the training reference: features' train split
    current: str  # canonical tables (clean parquet or raw csv) of the latest data
    feedback: str  # the serving feedback log (file or folder); may be absent
    reports: str
    drift: dict[str, DriftCheck]  # monitored column -> its check
    min_ctr: float = Field(ge=0, le=1)  # share of served lists with a click
    min_coverage: float = Field(ge=0, le=1)
    max_popularity_bias: float = Field(ge=0, le=1)
    min_feedback_lists: int = Field(ge=1)  # fewer served lists than this: proxies shown, not acted on
    # served lists younger than this are left out of the proxies: their clicks may still come (a session lasts
    # minutes), so counting them reads a fresh log as CTR 0 and fires a retrain on the first run
    feedback_settle_minutes: float = Field(ge=0)
    # the live stream's Parquet sink: its partitions of the last window_days join the current events (the ones no
    # ingest has taken yet); null or absent folder: the current tables alone
    stream_sink: str | None

    @field_validator("drift")
    @classmethod
    def _known_columns(cls, drift: dict[str, DriftCheck]) -> dict[str, DriftCheck]:
        unknown = sorted(set(drift) - set(MONITORED_COLUMNS))
        if unknown:
            raise ValueError(f"unknown column(s) {', '.join(unknown)} (monitored: {', '.join(MONITORED_COLUMNS)})")
        return drift


# ---------------------------------------------------------------- serving

class BatchingParams(Section):
    max_batch: int = Field(ge=1)  # query encodings run together at most
    max_wait_ms: float = Field(ge=0)  # how long the first query of a batch may wait for company
    # one thread per worker: rank the cache misses that reach the event loop together in one batch (hits are
    # answered at once). Same-run A/B on 2 cores at 8 concurrent: +9-11 % requests/s with Zipf queries at the
    # same p95, +19-28 % requests/s and p95 -6-29 % with queries never seen (benchmarks/README.md)
    on_loop: bool


class CacheParams(Section):
    size: int = Field(ge=0)  # entries of each worker's LRU and of the shared store (0: no cache)
    ttl_seconds: float = Field(gt=0)
    shared: bool  # without Redis, the workers of a host share entries (SQLite file in the state folder)
    redis_prefix: str
    redis_timeout_ms: float = Field(gt=0)  # one try per call on the request path, at most this long
    redis_retry_seconds: float = Field(gt=0)  # after a failure Redis is skipped; a background ping this often


class BanditParams(Section):
    enabled: bool
    policy: Literal["linucb", "thompson", "epsilon_greedy"]
    warmup_updates: int = Field(ge=0)  # serve the fused order (with exploration) until this many updates
    settle_seconds: float = Field(ge=0)  # feedback of a served list counts once it is this old
    poll_seconds: float = Field(gt=0)  # how often each worker reads new feedback from the log
    # how often a worker saves its state (policy, log offsets, unsettled lists): a save holds the unsettled
    # lists of the last settle_seconds, megabytes under load, so it is timed, not counted
    save_seconds: float = Field(gt=0)


class LimitParams(Section):
    """Per worker: a key's API requests a second and burst, and the requests in progress at most (429 beyond)."""

    rate_per_second: float = Field(gt=0)
    burst: float = Field(ge=1)
    max_concurrent: int = Field(ge=1)


class SlowClientParams(Section):
    """Deadlines of a slow client (pipelines/serving/slow_clients.py). Neither uvicorn nor BentoML has one for
    a request still arriving: a connection trickling its headers kept its socket (a file descriptor of the
    worker) for ever (a slowloris), one trickling its body until BentoML's traffic timeout answered 504."""

    # a connection is closed when a request's headers are not complete this long after it opened (or after
    # its previous response): 10 s is far above a real client's (one packet) and drops a slowloris early
    header_timeout_s: float = Field(gt=0)
    # a request whose body is not in this long after its headers gets 408 and is closed: 16 KB (max_body_bytes)
    # at a poor mobile link's ~2 KB/s takes 8 s; below BentoML's traffic timeout (30 s), so the client is told
    body_timeout_s: float = Field(gt=0)


class ServingParams(Section):
    """params.yaml `serving:`."""

    # the fitted fusion that orders each task's lists; auto: the one with the better cross-validated NDCG on
    # the validation requests (the fuse stage decides and records it in models/fusion/<task>/served.json)
    fusion: dict[Literal["search", "recommend"], Literal["lambdarank", "weighted", "auto"]]
    max_k: int = Field(ge=1)
    similar_neighbors: int = Field(ge=1)  # dense neighbours searched for substitutes
    use_student: bool  # the distilled, quantized query encoder when the bundle has one
    encoder_threads: int = Field(ge=1)
    max_body_bytes: int = Field(ge=256)
    # a keep-alive connection is closed after this many responses, so the workers share the load (connections.py)
    max_requests_per_connection: int = Field(ge=1)
    # OpenTelemetry spans of API requests (for a configured tracing exporter); off, BentoML's ~5 unexported
    # spans a request are not made
    trace_requests: bool
    public_paths: list[str]
    limits: LimitParams
    slow_clients: SlowClientParams
    feedback_dir: str  # SHOPFUSION_FEEDBACK_DIR overrides
    batching: BatchingParams
    cache: CacheParams
    bandit: BanditParams
