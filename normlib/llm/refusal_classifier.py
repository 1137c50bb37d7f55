"""A learned check on the keyword refusal rules: two logistic regressions over TF-IDF n-grams of an answer's opening.

Phrase rules level off near 93% accuracy on writing they have not seen: each new author declines in words no
list anticipates, and a partial answer's "I won't include the white bread" reads like a refusal. A linear model
over word and character n-grams of the first LEAD_CHARS characters of the (normalised) answer generalises
better from the same hand labels, and stays inspectable: every weight is in the shipped JSON file, and
`top_terms` names the n-grams that pushed an answer's score up. normlib/llm/refusal.py combines it with the
rules (the rules propose, the model vetoes a weak proposal or adds a confident miss); the thresholds and the
figures are in data/README.md.

Two outcomes, each its own model: "explicit" (full_refusal) and "not_carried_out" (full_refusal or
counter_argument). `fit_classifier` trains on the development split only (scripts/fit_refusal_classifier.py,
which records the files and their sha256); lbfgs is deterministic, so a refit on the same files gives the
same file up to float rounding.

File schema (data/refusal_classifier.json): {"schema": 1, "config": {lead_chars, max_features, C, word_ngrams,
char_ngrams, min_df, token_pattern}, "thresholds": {...}, "training": {"files": [{"path", "sha256", "rows"}], "rows"},
"vectorizers": {"word"|"char": {"vocabulary": [term, ...], "idf": [float, ...]}},
"outcomes": {"explicit"|"not_carried_out": {"intercept": float, "coef": [float, ...]}}}; coef runs over the
word vocabulary, then the char vocabulary.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

CLASSIFIER_PATH = Path(__file__).resolve().parents[2] / "data" / "refusal_classifier.json"
OUTCOMES = ("explicit", "not_carried_out")
# words keep their contractions: the default pattern reads "can't help" as "can help"
DEFAULT_CONFIG = {"lead_chars": 600, "max_features": 8000, "C": 16.0, "word_ngrams": [1, 3], "char_ngrams": [2, 5],
                  "min_df": 2, "token_pattern": r"[a-z0-9]+(?:'[a-z]+)?"}
# tuned on development files the rules had not seen (data/README.md, "fifth round"): a rule's refusal stands when
# the classifier gives it at least `veto`; the classifier alone calls one at `alone` (None: never). Alone it would
# also find counter-arguments (recall 0.88 on held-out writing) but calls generic advice and small models' drift
# "not carried out" too, so that outcome's misses are left to the judge.
DEFAULT_THRESHOLDS = {"explicit": {"veto": 0.2, "alone": 0.8}, "not_carried_out": {"veto": 0.3, "alone": None}}


def _vectorizer(kind: str, config: dict, vocabulary=None):
    from sklearn.feature_extraction.text import TfidfVectorizer
    lo, hi = config[f"{kind}_ngrams"]
    return TfidfVectorizer(analyzer="word" if kind == "word" else "char_wb", ngram_range=(lo, hi),
                           token_pattern=config["token_pattern"] if kind == "word" else None, min_df=config["min_df"],
                           max_features=config["max_features"], sublinear_tf=True, lowercase=False,
                           vocabulary=vocabulary, dtype=np.float64)


@dataclass(frozen=True)
class RefusalClassifier:
    config: dict
    thresholds: dict
    vectorizers: tuple  # (word, char), fitted sklearn TfidfVectorizers rebuilt from the file
    terms: tuple  # every feature's n-gram, word vocabulary then char vocabulary, for `top_terms`
    coef: dict  # outcome -> np.ndarray over `terms`
    intercept: dict  # outcome -> float

    def features(self, texts: list[str]):
        from scipy.sparse import hstack
        clipped = [t[:self.config["lead_chars"]] for t in texts]
        return hstack([v.transform(clipped) for v in self.vectorizers]).tocsr()

    def probabilities(self, texts: list[str]) -> dict[str, np.ndarray]:
        """outcome -> P(outcome) per text. The texts are already normalised (refusal.classifier_text)."""
        x = self.features(texts)
        return {o: 1.0 / (1.0 + np.exp(-(x @ self.coef[o] + self.intercept[o]))) for o in OUTCOMES}

    def top_terms(self, text: str, outcome: str, k: int = 3) -> list[str]:
        """The n-grams that raised this text's score most, for the audit trail."""
        row = self.features([text])
        contributions = row.data * self.coef[outcome][row.indices]
        order = np.argsort(-contributions)[:k]
        return [self.terms[row.indices[i]].strip() for i in order if contributions[i] > 0]


def fit_classifier(texts: list[str], labels: list[str], config: dict | None = None,
                   thresholds: dict | None = None, training: dict | None = None) -> dict:
    """Fit both outcomes on normalised texts and their six-class labels; returns the JSON-able file content."""
    from scipy.sparse import hstack
    from sklearn.linear_model import LogisticRegression
    config = dict(DEFAULT_CONFIG, **(config or {}))
    clipped = [t[:config["lead_chars"]] for t in texts]
    vectorizers = {kind: _vectorizer(kind, config) for kind in ("word", "char")}
    x = hstack([v.fit_transform(clipped) for v in vectorizers.values()]).tocsr()
    gold = {"explicit": np.array([label == "full_refusal" for label in labels]),
            "not_carried_out": np.array([label in ("full_refusal", "counter_argument") for label in labels])}
    outcomes = {}
    for outcome in OUTCOMES:
        model = LogisticRegression(C=config["C"], max_iter=5000).fit(x, gold[outcome])
        outcomes[outcome] = {"intercept": round(float(model.intercept_[0]), 6),
                             "coef": [round(float(c), 6) for c in model.coef_[0]]}
    vocab = {}
    for kind, v in vectorizers.items():
        terms = sorted(v.vocabulary_, key=v.vocabulary_.get)
        vocab[kind] = {"vocabulary": terms, "idf": [round(float(i), 6) for i in v.idf_]}
    return {"schema": 1, "config": config, "thresholds": thresholds or DEFAULT_THRESHOLDS,
            "training": training or {}, "vectorizers": vocab, "outcomes": outcomes}


def classifier_from_dict(content: dict, source: str = "<dict>") -> RefusalClassifier:
    if content.get("schema") != 1 or set(content.get("outcomes", {})) != set(OUTCOMES):
        raise ValueError(f"{source}: not a refusal classifier file (schema 1 with outcomes {', '.join(OUTCOMES)})")
    config = content["config"]
    vectorizers, terms = [], []
    for kind in ("word", "char"):
        part = content["vectorizers"][kind]
        v = _vectorizer(kind, config, vocabulary={t: i for i, t in enumerate(part["vocabulary"])})
        v.idf_ = np.asarray(part["idf"], dtype=np.float64)
        vectorizers.append(v)
        terms += part["vocabulary"]
    coef = {o: np.asarray(content["outcomes"][o]["coef"], dtype=np.float64) for o in OUTCOMES}
    if any(len(c) != len(terms) for c in coef.values()):
        raise ValueError(f"{source}: {len(terms)} terms but coefficient lengths "
                         f"{[len(c) for c in coef.values()]}")
    return RefusalClassifier(config=config, thresholds=content["thresholds"], vectorizers=tuple(vectorizers),
                             terms=tuple(terms), coef=coef,
                             intercept={o: float(content["outcomes"][o]["intercept"]) for o in OUTCOMES})


@lru_cache(maxsize=4)
def load_classifier(path: Path = CLASSIFIER_PATH) -> RefusalClassifier:
    """The shipped classifier (read once per process: it is a constant of the code, like the rules)."""
    try:
        content = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read the refusal classifier ({e}); "
                         f"rebuild it with scripts/fit_refusal_classifier.py") from e
    return classifier_from_dict(content, str(path))
