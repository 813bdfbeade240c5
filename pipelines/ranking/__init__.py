"""Ranking: the fused ranking (candidate pooling and scoring), the fusions (RRF, weighted, LambdaRank, the
relevance model), the task definitions, title-match features and explanations. Shared by the fuse and evaluate
stages and the service, so offline and online rank alike. Imports core, data and models."""
