"""The order in which one reader sees the cases: randomised, conditions far apart, counterbalanced.

A session has two halves. Every case appears once in each half, once per condition, so the
two presentations of a case are at least half a session apart. Which condition comes first
is counterbalanced twice: within a reader half of the cases start with ``maps`` and half with
``latent_shift``, and readers of odd registration index get the mirror image of the readers
of even index, so across a pair of readers every case is seen first in both conditions.
"""

from __future__ import annotations

import random

CONDITIONS = ("maps", "latent_shift")


def maps_first_cases(case_ids: list[str], study_seed: int) -> set[str]:
    """The half of the cases (seeded by the study) that even-index readers see as ``maps`` first."""
    shuffled = sorted(case_ids)
    random.Random(f"study:{study_seed}").shuffle(shuffled)
    return set(shuffled[: len(shuffled) // 2])


def reader_schedule(case_ids: list[str], reader_code: str, reader_index: int,
                    study_seed: int) -> list[tuple[str, str]]:
    """[(case id, condition), ...] of length 2·n for one reader.

    The first half is a random order of the cases (seeded by the reader code and the study
    seed); the second half reshuffles the first quarter and the second quarter separately,
    so each case's second presentation comes more than n/2 positions after its first.
    """
    rng = random.Random(f"reader:{study_seed}:{reader_code}")
    first = sorted(case_ids)
    rng.shuffle(first)
    middle = len(first) // 2
    early, late = first[:middle], first[middle:]
    rng.shuffle(early)
    rng.shuffle(late)
    second = early + late
    maps_first = maps_first_cases(case_ids, study_seed)
    mirrored = reader_index % 2 == 1

    def first_condition(case_id: str) -> str:
        starts_with_maps = (case_id in maps_first) != mirrored
        return CONDITIONS[0] if starts_with_maps else CONDITIONS[1]

    def other(condition: str) -> str:
        return CONDITIONS[1] if condition == CONDITIONS[0] else CONDITIONS[0]

    return ([(c, first_condition(c)) for c in first] + [(c, other(first_condition(c))) for c in second])
