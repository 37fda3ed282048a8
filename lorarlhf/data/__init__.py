"""Human-preference data in every common shape, read into one list of (prompt, chosen, rejected) pairs.

Reward models and DPO train on pairs, but preference data ships in many shapes, and one file may mix them:

    pair          prompt, chosen, rejected                       TRL's explicit-prompt format
    hh-rlhf       chosen, rejected                               Anthropic HH-RLHF (Bai et al. 2022): whole
                                                                 "\\n\\nHuman: ...\\n\\nAssistant: ..." transcripts
    conversation  chosen, rejected as message lists              TRL's implicit-prompt conversational format
    ranking       prompt, responses, ranks (1 = best)            InstructGPT (Ouyang et al. 2022) K-way rankings,
                  or prompt, ranking (responses best first)      each giving all C(K, 2) pairs
    ratings       prompt, responses, scores (higher is better)   UltraFeedback (Cui et al. 2023)
    votes         prompt, a, b, votes ("a"/"b"/"tie" each)       raw annotator judgements
    prompt        prompt                                         prompt-only data for RL (`load_prompts`)

`load_preferences` detects each row's shape from its fields and turns it into pairs; what it read and
dropped (ties, duplicates, pairs too long for the model) is in the returned list's `.report`. Bad input
is a `PreferenceDataError` naming the source, the 1-based row and the field: a silently skipped row is a
silently different training set.

The package's modules, each importing only those listed before it:

    records      PreferenceDataError, PreferencePair, Row (one input record), BadRows (skip_bad_rows)
    sources      open_source and the file readers (jsonl, json, csv, parquet), datasets and Hub ids
    columns      columns={"prompt": "question", ...}: another layout's field names renamed to ours
    layouts      hub layouts as published (UltraFeedback, SHP, PKU-SafeRLHF, HelpSteer, oasst, chatbot arena,
                 orca pairs, KTO rows), recognised by their fields and turned into the shapes above
    shapes       the parser of each shape above, the votes aside
    votes        vote items pooled, majority and Bradley-Terry aggregation, Fleiss' kappa, vote_agreement
    preferences  load_preferences, its LoadReport, duplicate and too-long drops, split_eval
    prompts      load_prompts
    feedback     load_feedback: unpaired labels (KTO); thumbs: pairs split into them
    demonstrations  load_demonstrations, for SFT
"""

from lorarlhf.data.feedback import FEEDBACK_FIELDS, Feedback, FeedbackList, is_feedback, load_feedback, thumbs
from lorarlhf.data.layouts import LAYOUTS, PREFER_BY, SFT_MIN_RATING
from lorarlhf.data.preferences import AGGREGATIONS, DROP_REASONS, LoadReport, Preferences, load_preferences, split_eval
from lorarlhf.data.prompts import Prompts, load_prompts
from lorarlhf.data.records import SHAPES, BadRow, PreferenceDataError, PreferencePair, Row
from lorarlhf.data.shapes import HH_ASSISTANT
from lorarlhf.data.sources import SUPPORTED_EXTENSIONS, open_source, read_jsonl
from lorarlhf.data.votes import (
    VOTE_LABELS,
    AgreementReport,
    AnnotatorAgreement,
    AnnotatorPair,
    DisputedItem,
    bradley_terry,
    fleiss_kappa,
    vote_agreement,
)
from lorarlhf.model.chat import Conversation

__all__ = [
    "Conversation",
    "AGGREGATIONS",
    "DROP_REASONS",
    "HH_ASSISTANT",
    "LAYOUTS",
    "PREFER_BY",
    "SFT_MIN_RATING",
    "SHAPES",
    "SUPPORTED_EXTENSIONS",
    "VOTE_LABELS",
    "AgreementReport",
    "AnnotatorAgreement",
    "AnnotatorPair",
    "BadRow",
    "DisputedItem",
    "FEEDBACK_FIELDS",
    "Feedback",
    "FeedbackList",
    "LoadReport",
    "PreferenceDataError",
    "PreferencePair",
    "Preferences",
    "Row",
    "bradley_terry",
    "fleiss_kappa",
    "is_feedback",
    "load_feedback",
    "load_preferences",
    "load_prompts",
    "Prompts",
    "open_source",
    "read_jsonl",
    "split_eval",
    "thumbs",
    "vote_agreement",
]
