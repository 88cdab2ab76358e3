"""MM-Vet's judge: any OpenAI-compatible chat-completions endpoint (a local vLLM server, ...) grading
a whole response in [0, 1] with MM-Vet's own grading prompt, as MM-Vet's evaluator
(``mm-vet_evaluator.py`` in github.com/yuweihao/MM-Vet) asks GPT-4: its few-shot table, then the row
``question | ground truth | response | ``; the grade is the reply's first word, and a reply that is
not a number in [0, 1] is asked again with "Predict the correctness of the answer (digit): " at a
temperature 0.5 higher each time (up to four times here; then 0). The API key comes from
``$VISPLAY_JUDGE_API_KEY`` and is never logged or returned; grades are cached in a JSON file keyed by
(item id, judge model, prompt), so re-scoring sends no request.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import urllib.error
import urllib.request
from pathlib import Path

from .core import Item, JudgeError

JUDGE_KEY_ENV = "VISPLAY_JUDGE_API_KEY"
RETRIES = 4

# MM-Vet's grading prompt, verbatim from its evaluator, so that grades mean what MM-Vet's do.
MMVET_PROMPT = """Compare the ground truth and prediction from AI models, to give a correctness score for the prediction. <AND> in the ground truth means it is totally right only when all elements in the ground truth are present in the prediction, and <OR> means it is totally right when any one element in the ground truth is present in the prediction. The correctness score is 0.0 (totally wrong), 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, or 1.0 (totally right). Just complete the last space of the correctness score.

Question | Ground truth | Prediction | Correctness
--- | --- | --- | ---
What is x in the equation? | -1 <AND> -5 | x = 3 | 0.0
What is x in the equation? | -1 <AND> -5 | x = -1 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -5 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -5 or 5 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -1 or x = -5 | 1.0
Can you explain this meme? | This meme is poking fun at the fact that the names of the countries Iceland and Greenland are misleading. Despite its name, Iceland is known for its beautiful green landscapes, while Greenland is mostly covered in ice and snow. The meme is saying that the person has trust issues because the names of these countries do not accurately represent their landscapes. | The meme talks about Iceland and Greenland. It's pointing out that despite their names, Iceland is not very icy and Greenland isn't very green. | 0.4
Can you explain this meme? | This meme is poking fun at the fact that the names of the countries Iceland and Greenland are misleading. Despite its name, Iceland is known for its beautiful green landscapes, while Greenland is mostly covered in ice and snow. The meme is saying that the person has trust issues because the names of these countries do not accurately represent their landscapes. | The meme is using humor to point out the misleading nature of Iceland's and Greenland's names. Iceland, despite its name, has lush green landscapes while Greenland is mostly covered in ice and snow. The text 'This is why I have trust issues' is a playful way to suggest that these contradictions can lead to distrust or confusion. The humor in this meme is derived from the unexpected contrast between the names of the countries and their actual physical characteristics. | 1.0
"""  # noqa: E501
MMVET_RETRY = "\nPredict the correctness of the answer (digit): "


def mmvet_prompt(question: str, answer: str, response: str) -> str:
    """MM-Vet's grading prompt for one response: the few-shot table and the row to complete."""
    truth = answer.replace("<AND>", " <AND> ").replace("<OR>", " <OR> ")
    return MMVET_PROMPT + "\n" + " | ".join([question, truth, response, ""])


def read_grade(reply: str) -> float | None:
    """The reply's first word as a grade in [0, 1], as MM-Vet reads it; None if it is not one."""
    try:
        grade = float(reply.strip().split(" ")[0].strip())
    except ValueError:
        return None
    return grade if 0.0 <= grade <= 1.0 else None


class Judge:
    """An OpenAI-compatible chat-completions endpoint grading responses in [0, 1], with a per-item cache.

    ``url`` is the API base (``http://host:8000/v1``) or the full ``.../chat/completions`` address; ``model``
    defaults to the first model the endpoint lists (what a vLLM server serves). The key, if any, is read from
    ``$VISPLAY_JUDGE_API_KEY`` at each request and kept nowhere else.
    """

    def __init__(self, url: str, model: str | None = None, cache_path: str | Path = ".visplay/judge-cache.json",
                 timeout: float = 60.0):
        self.base = re.sub(r"/chat/completions/?$", "", url.rstrip("/"))
        self._model, self.cache_path, self.timeout = model, Path(cache_path), timeout
        self.requests = 0  # requests sent by this instance (the cache's savings are visible here)

    def _call(self, path: str, body: dict | None = None) -> dict:
        headers = {"Content-Type": "application/json"}
        if os.environ.get(JUDGE_KEY_ENV):
            headers["Authorization"] = f"Bearer {os.environ[JUDGE_KEY_ENV]}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, headers=headers)
        self.requests += 1
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as e:
            raise JudgeError(f"mm-vet: judge at {self.base}{path} answered HTTP {e.code} {e.reason}") from None
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise JudgeError(f"mm-vet: judge at {self.base}{path} failed: {getattr(e, 'reason', e)}") from None

    @property
    def model(self) -> str:
        if self._model is None:
            listed = self._call("/models").get("data") or []
            if not listed:
                raise JudgeError(f"mm-vet: judge at {self.base} lists no models; give one explicitly")
            self._model = listed[0]["id"]
        return self._model

    def _ask(self, prompt: str, temperature: float) -> str:
        reply = self._call("/chat/completions", {"model": self.model, "temperature": temperature, "max_tokens": 3,
                                                 "messages": [{"role": "user", "content": prompt}]})
        try:
            return reply["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise JudgeError(f"mm-vet: judge at {self.base} sent no chat completion") from None

    def _load_cache(self) -> dict:
        return json.loads(self.cache_path.read_text()) if self.cache_path.exists() else {}

    def _save_cache(self, cache: dict) -> None:
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.cache_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(cache, indent=0, sort_keys=True))
        tmp.replace(self.cache_path)

    def grade(self, item: Item, response: str) -> float:
        """The judge's grade for the whole ``response`` to ``item``, from the cache when asked before."""
        prompt = mmvet_prompt(item.question, item.answer, response)
        key = hashlib.sha256(json.dumps([item.id, self.model, prompt]).encode()).hexdigest()
        cache = self._load_cache()
        if key not in cache:
            grade = read_grade(self._ask(prompt, 0.0))
            for attempt in range(1, RETRIES + 1):
                if grade is not None:
                    break
                grade = read_grade(self._ask(prompt + MMVET_RETRY, 0.5 * attempt))
            cache[key] = {"item": item.id, "model": self.model, "score": grade or 0.0, "unparsed": grade is None}
            self._save_cache(cache)
        return cache[key]["score"]
