"""Few-shot evaluation of embeddings: seeded episodes, Lake's one-shot runs, confidence intervals."""

from retrieval.evaluation.episodes import Episode, EpisodeSamplingError, episode_accuracy, sample_episodes
from retrieval.evaluation.lake import lake_oneshot_accuracy
from retrieval.evaluation.stats import Estimate, mean_ci
from retrieval.evaluation.types import EmbedFunction

__all__ = [
    "EmbedFunction",
    "Episode",
    "EpisodeSamplingError",
    "Estimate",
    "episode_accuracy",
    "lake_oneshot_accuracy",
    "mean_ci",
    "sample_episodes",
]
