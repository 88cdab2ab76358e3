"""Real-benchmark adapters: loading fixtures in each benchmark's schema, prompts, scoring rules, the judge."""

import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from visplay_core import benchmarks as B
from visplay_core.benchmarks import SEVERAL, BenchmarkDataError, BenchmarkError, Item, load_items, score

FIXTURES = Path(__file__).parent / "fixtures" / "benchmarks"
ROWS = {"mmmu": 4, "mm-vet": 4, "realworldqa": 3, "visnumbench": 3, "mathverse": 4, "math-vision": 3,
        "hallusionbench": 6}


def items_of(name, **kw):
    return load_items(name, FIXTURES / name, **kw)


# ----------------------------------------------------------------------------------------------------
# Loading and prompts


def test_every_benchmark_has_an_adapter_and_a_fixture():
    assert set(B.ADAPTERS) == set(ROWS)
    assert B.get_adapter("MMVet").name == "mm-vet" and B.get_adapter("math_vision").name == "math-vision"
    with pytest.raises(BenchmarkError, match="known: hallusionbench, mathverse, math-vision, mmmu, mm-vet, "):
        B.get_adapter("mmlu")


@pytest.mark.parametrize("name", sorted(ROWS))
def test_fixture_loads_and_every_item_is_prompted_with_its_images(name):
    items = items_of(name)
    assert len(items) == ROWS[name]
    assert len({i.id for i in items}) == len(items)
    for item in items:
        assert item.images and all(isinstance(im, Image.Image) and im.mode == "RGB" for im in item.images)
        content = B.messages(item)[0]["content"]
        assert [c["type"] for c in content] == ["image"] * len(item.images) + ["text"]
        assert item.question in content[-1]["text"] and "\\boxed{}" in content[-1]["text"]
        if item.kind == "choice":
            assert item.answer in item.letters and B.CHOICE_HINT in item.question
    assert [i.id for i in items_of(name, limit=2)] == [i.id for i in items[:2]]


def test_mmmu_options_are_lettered_and_all_images_attached():
    single, double, rod, rate = items_of("mmmu")
    assert "\nA. 3\nB. 4\nC. 5\nD. 6\n" in single.question and (single.answer, single.letters) == ("B", "ABCD")
    assert len(double.images) == 2 and "\nA. <image 1>\nB. <image 2>\nC. Neither\n" in double.question
    assert (rod.kind, rod.answer, rate.kind) == ("open", "3.5", "open")


def test_visnumbench_marked_options_become_lettered_lines():
    angle, scale, length = items_of("visnumbench")
    assert "\nA. 30\nB. 45\nC. 90\nD. 120\n" in angle.question and angle.answer == "C"
    assert "C. the green bar" in length.question and length.answer == "A" and length.letters == "ABC"
    assert angle.group["category"] == "Angle"


def test_visnumbench_ids_repeated_across_its_synthetic_and_real_parts_are_made_unique():
    ids = [i.id for i in items_of("visnumbench")]
    assert ids == ["Synthetic/angle_0001_Angle", "Synthetic/77_Scale", "Real/77_Scale"]


def test_questions_that_list_their_options_keep_them_once():
    choice, lanes, light = items_of("realworldqa")
    assert "Please answer directly" not in choice.question  # the boxed-answer prompt replaces it
    assert choice.question.count("B. The sign") == 1 and choice.letters == "ABC"
    assert (lanes.kind, lanes.answer) == ("open", "3")
    text_choice, vision_only, angle, area = items_of("mathverse")
    assert text_choice.question.count("B:50°") == 1 and "B. 50°" not in text_choice.question
    assert text_choice.options == ("40°", "50°", "130°", "140°") and text_choice.letters == "ABCD"
    assert vision_only.question.startswith(B.IN_IMAGE) and vision_only.letters == "ABCDE"
    assert (angle.kind, area.kind, vision_only.group["category"]) == ("open", "open", "Vision Only")


def test_math_vision_options_drawn_in_the_image_are_not_listed():
    in_image, free, listed = items_of("math-vision")
    assert "A. A" not in in_image.question and in_image.letters == "ABCDE" and in_image.answer == "D"
    assert free.kind == "open" and "\nC. 16\n" in listed.question


def test_hallusionbench_gold_is_yes_no():
    items = items_of("hallusionbench")
    assert [i.answer for i in items] == ["yes", "no", "no", "yes", "yes", "no"]
    assert all(i.kind == "yesno" and i.question.endswith(B.YES_NO_HINT) for i in items)


def test_parse_options_forms():
    assert B.parse_options("['1', '2']") == ["1", "2"]
    assert B.parse_options(["x", "y"]) == ["x", "y"]
    assert B.parse_options("(a) 10 (b) 20") == ["10", "20"]
    assert B.parse_options("10\n20\n") == ["10", "20"]
    assert B.options_in_text("Which?\nA. one\nB. two\nThanks") == ["one", "two"]
    assert B.options_in_text("A car is parked. Is it red?") == []


# ----------------------------------------------------------------------------------------------------
# Sources and missing data


def test_a_parquet_file_a_save_to_disk_folder_and_a_dataset_dict_load_alike(tmp_path):
    import datasets

    [file] = (FIXTURES / "mmmu" / "data").glob("validation-*.parquet")
    expected = [i.id for i in items_of("mmmu")]
    assert [i.id for i in load_items("mmmu", file)] == expected
    dataset = datasets.Dataset.from_parquet(str(file), cache_dir=str(tmp_path / "cache"))
    dataset.save_to_disk(str(tmp_path / "saved"))
    assert [i.id for i in load_items("mmmu", tmp_path / "saved")] == expected
    datasets.DatasetDict({"validation": dataset}).save_to_disk(str(tmp_path / "dict"))
    loaded = load_items("mmmu", tmp_path / "dict", limit=3)
    assert [i.id for i in loaded] == expected[:3] and len(loaded[1].images) == 2
    with pytest.raises(BenchmarkDataError, match="no split 'dev'.*has: validation"):
        load_items("mmmu", tmp_path / "dict", split="dev")


def test_split_files_are_named_exactly_after_the_split():
    names = ["testmini.parquet", "testmini_text_only.parquet", "data/test-00000-of-00001-7b3f.parquet",
             "data/testmini-00000-of-00001-2e8c.parquet", "data/test.parquet", "test_b-00000.parquet"]
    files = [Path(n) for n in names]
    assert [str(f) for f in B.split_files(files, "testmini")] == ["testmini.parquet",
                                                                   "data/testmini-00000-of-00001-2e8c.parquet"]
    assert [str(f) for f in B.split_files(files, "test")] == ["data/test-00000-of-00001-7b3f.parquet",
                                                               "data/test.parquet"]
    assert B.split_files(files, "testmini_text_only") == [Path("testmini_text_only.parquet")]


def test_a_hub_snapshot_folder_reads_only_its_split(tmp_path):
    """Other splits and configs beside the split read are left alone (MathVerse's text-only config,
    MATH-Vision's testmini, a subset of test), and a folder without the split says what it has."""
    mathverse = items_of("mathverse")
    assert len(mathverse) == 4 and all(i.images for i in mathverse)
    assert [i.id for i in items_of("math-vision")] == ["1", "2", "3"]
    assert [i.id for i in items_of("math-vision", split="testmini")] == ["2"]
    assert [i.id for i in items_of("mmmu", split="dev")] == ["dev_Math_1"]
    text_only = items_of("mathverse", split="testmini_text_only")
    assert len(text_only) == 2 and not any(i.images for i in text_only)
    with pytest.raises(BenchmarkDataError, match=r"mmmu: no parquet file of split 'train' at .*mmmu \(has: "
                                                 r"data/dev-00000-of-00001-0f4e9d2c7b6a1e3d.parquet, "):
        items_of("mmmu", split="train")
    shutil.copytree(FIXTURES / "mmmu", tmp_path / "mmmu")
    shutil.copy(next((FIXTURES / "realworldqa" / "data").glob("test-*")), tmp_path / "mmmu" / "test-00000.parquet")
    with pytest.raises(BenchmarkDataError, match=r"mmmu: data at .*test-00000.parquet lacks column\(s\) id"):
        load_items("mmmu", tmp_path / "mmmu", split="test")


def test_a_snapshot_of_mmmu_with_one_folder_per_subject_reads_every_subject(tmp_path):
    """MMMU/MMMU keeps each subject in its own folder: ``<Subject>/validation-00000-of-00001.parquet``."""
    import pyarrow.parquet as pq

    [file] = (FIXTURES / "mmmu" / "data").glob("validation-*.parquet")
    table = pq.read_table(file)
    for subject, rows in [("Art_Theory", table.slice(0, 2)), ("Math", table.slice(2, 2))]:
        (tmp_path / subject).mkdir()
        pq.write_table(rows, tmp_path / subject / "validation-00000-of-00001.parquet")
        pq.write_table(rows.slice(0, 1), tmp_path / subject / "dev-00000-of-00001.parquet")
    assert [i.id for i in load_items("mmmu", tmp_path)] == [i.id for i in items_of("mmmu")]


def test_repeated_item_ids_are_a_clear_error(tmp_path):
    """Items are keyed by id (judge cache, records): a source listing an item twice is refused."""
    [file] = (FIXTURES / "math-vision" / "data").glob("test-*.parquet")
    shutil.copy(file, tmp_path / "test-00000-of-00002.parquet")
    shutil.copy(file, tmp_path / "test-00001-of-00002.parquet")
    with pytest.raises(BenchmarkDataError, match=r"math-vision: item id '1' repeats at .* \(rows 0 and 3\)"):
        load_items("math-vision", tmp_path)


def test_missing_data_names_the_benchmark_and_the_place(tmp_path, monkeypatch):
    with pytest.raises(BenchmarkDataError) as missing:
        load_items("mmmu", tmp_path / "nowhere")
    message = str(missing.value)
    assert message.startswith("mmmu: no data at ") and str(tmp_path / "nowhere") in message
    assert "parquet file, a save_to_disk folder, or a datasets name such as lmms-lab/MMMU" in message
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BenchmarkDataError, match=r"hallusionbench: no data at data/hallusionbench \(expected"):
        load_items("hallusionbench")
    with pytest.raises(BenchmarkDataError, match="mm-vet: no data at data/mm-vet"):
        B.evaluate_benchmark(None, None, "mm-vet")  # fails before touching the model
    (tmp_path / "empty").mkdir()
    with pytest.raises(BenchmarkDataError, match="no parquet files or save_to_disk dataset"):
        load_items("visnumbench", tmp_path / "empty")


def test_wrong_schema_and_unreachable_hub_names_are_clear_errors():
    with pytest.raises(BenchmarkDataError, match=r"mmmu: data at .* lacks column\(s\) id, options"):
        load_items("mmmu", FIXTURES / "realworldqa", split="test")
    with pytest.raises(BenchmarkDataError, match="mathverse: no data at nobody/no-such-set.*datasets name"):
        load_items("mathverse", "nobody/no-such-set")  # the tests run with HF_HUB_OFFLINE=1


# ----------------------------------------------------------------------------------------------------
# Scoring rules


OPTIONS = ("3", "4", "5", "6")


@pytest.mark.parametrize("completion, expected", [
    ("\\boxed{B}", "B"),
    ("so \\boxed{(b)}", "B"),
    ("\\boxed{B. 4}", "B"),
    ("\\boxed{(B) four}", "B"),
    ("\\boxed{Option C}", "C"),
    ("\\boxed{\\text{D}}", "D"),
    ("\\boxed{4}", "B"),  # exactly one option's text
    ("\\boxed{E}", "E"),  # a letter, just not a valid one: answered, wrong
    ("\\boxed{A, C}", SEVERAL),
    ("\\boxed{AC}", SEVERAL),
    ("\\boxed{A and C}", SEVERAL),
    ("I count four sides, so the answer is C.", "C"),
    ("Answer: (D)", "D"),
    ("The answer is A or B.", SEVERAL),
    ("the answer is B, no wait \\boxed{C}", "C"),  # the boxed answer wins
    ("four sides", None),
    ("\\boxed{A cat}", None),
    ("\\boxed{}", None),
    ("the answer is a square", None),
])
def test_extract_choice(completion, expected):
    assert B.extract_choice(completion, "ABCD", OPTIONS) == expected


@pytest.mark.parametrize("prediction, gold, match", [
    ("3.5 cm", "3.5", True),
    ("3.5", "3.5 cm", True),
    ("3.50", "3.5", True),
    ("3.52", "3.5", False),  # numbers are equal or wrong, unless the benchmark rounds (below)
    ("2000", "2016", False),
    ("99", "100", False),
    ("0.333", "1/3", False),
    ("1,000", "1000", True),
    ("3/4", "0.75", True),
    ("\\frac{3}{4}", "0.75", True),
    ("$12", "12", True),
    ("60^\\circ", "60°", True),
    ("25\\%", "25", True),
    ("0", "0", True),
    ("0.001", "0", False),
    ("3 or 4", "3", False),
    ("x = 3", "3", False),
    ("2\\sqrt{3}", "2", False),
    ("three", "3", True),  # answers_match's number words
    ("The Sign", "the sign", True),
    ("2.50", "['2.5', '2.50']", True),  # MMMU list-literal golds
    ("three", "3<OR>three", True),
    ("x = -1 or x = -5", "-1<AND>-5", True),
    ("x = -1", "-1<AND>-5", False),
    ("x = -15", "-1<AND>-5", False),
    (None, "3", False),
])
def test_open_match(prediction, gold, match):
    assert B.open_match(prediction, gold) is match


@pytest.mark.parametrize("prediction, gold, match", [
    ("3.504", "3.5", True),  # 3.5 either way once rounded to 2 decimals
    ("3.52", "3.5", False),
    ("0.333", "1/3", True),
    ("2.675", "2.67", True),  # Python's round, as MMMU and MATH-Vision use it (2.675 is stored as 2.67499...)
    ("2000", "2016", False),
    ("99", "100", False),
    ("1,000.001", "1000", True),
])
def test_open_match_rounded_to_two_decimals(prediction, gold, match):
    """MMMU (eval_utils.normalize_str) and MATH-Vision (utils.is_equal) compare numbers rounded to 2 decimals."""
    assert B.open_match(prediction, gold, decimals=2) is match


@pytest.mark.parametrize("completion, expected", [
    ("\\boxed{Yes}", "yes"),
    ("\\boxed{yes.}", "yes"),
    ("\\boxed{True}", "yes"),
    ("\\boxed{No, they differ}", "no"),
    ("\\boxed{\\text{no}}", "no"),
    ("The answer is yes.", "yes"),
    ("Answer: No", "no"),
    ("\\boxed{maybe}", None),
    ("I cannot tell", None),
])
def test_read_yes_no(completion, expected):
    assert B.read_yes_no(completion) == expected


def test_mmmu_scores_letters_several_units_and_no_answer():
    result = score("mmmu", items_of("mmmu"), ["\\boxed{B}", "\\boxed{A, B}", "The rod is \\boxed{3.5 cm}", "no idea"],
                   details=True)
    assert (result["accuracy"], result["n"], result["no_answer"], result["several_answers"]) == (0.5, 4, 1, 1)
    assert result["per_category"] == {"multiple-choice": {"accuracy": 0.5, "n": 2}, "open": {"accuracy": 0.5, "n": 2}}
    assert [r["status"] for r in result["items"]] == ["answered", "several", "answered", "no_answer"]
    assert result["scoring"].startswith("deterministic")
    assert score("mmmu", items_of("mmmu")[3:], ["\\boxed{2.50\\%}"])["accuracy"] == 1.0


@pytest.mark.parametrize("name, index, completion, right", [
    ("mmmu", 2, "\\boxed{3.504 cm}", True),  # gold 3.5, MMMU rounds to 2 decimals
    ("mmmu", 2, "\\boxed{3.52}", False),
    ("math-vision", 1, "\\boxed{10.001}", True),  # gold 10, MATH-Vision rounds to 2 decimals
    ("math-vision", 1, "\\boxed{10.1}", False),
    ("mathverse", 3, "\\boxed{4.8}", True),  # gold 4.8; MathVerse has no rounding rule: equal or wrong
    ("mathverse", 3, "\\boxed{4.81}", False),
    ("mathverse", 3, "\\boxed{4.804}", False),
])
def test_each_benchmark_compares_numbers_by_its_own_rule(name, index, completion, right):
    assert score(name, items_of(name)[index:index + 1], [completion])["accuracy"] == float(right)


@pytest.mark.parametrize("name, completions, accuracy, no_answer", [
    ("realworldqa", ["\\boxed{B}", "\\boxed{three}", "\\boxed{Green}"], 2 / 3, 0),
    ("visnumbench", ["\\boxed{(c)}", "\\boxed{5}", "the red bar"], 2 / 3, 1),
    ("mathverse", ["\\boxed{B}", "The answer is B", "\\boxed{60^\\circ}", "\\boxed{4.9}"], 0.75, 0),
    ("math-vision", ["\\boxed{D}", "\\boxed{10 cubes}", "\\boxed{16}"], 1.0, 0),
    ("mm-vet", ["\\boxed{Red}", "\\boxed{x = -1 or x = -5}", "\\boxed{three}", "It says stop"], 0.75, 1),
])
def test_scores_by_hand(name, completions, accuracy, no_answer):
    result = score(name, items_of(name), completions)
    assert result["accuracy"] == pytest.approx(accuracy) and result["no_answer"] == no_answer
    assert result["n"] == ROWS[name] and result["benchmark"] == name


def test_mm_vet_without_a_judge_says_it_fell_back():
    result = score("mm-vet", items_of("mm-vet"), ["\\boxed{red}"] * 4)
    assert "fallback" in result["scoring"] and "no judge" in result["scoring"] and "judge_requests" not in result


def test_hallusionbench_figure_and_question_pair_accuracy_by_hand():
    # gold: yes no no yes yes no (VD set 0: figures 0/1 x questions 0/1; VS set 1: figures 1/2, question 0)
    completions = ["\\boxed{Yes}", "\\boxed{No, they differ}", "\\boxed{yes}", "\\boxed{True}", "The answer is yes.",
                   "\\boxed{maybe}"]
    result = score("hallusionbench", items_of("hallusionbench"), completions)
    # right: 1 1 0 1 1 0 (the last has no yes/no answer)
    assert result["accuracy"] == pytest.approx(4 / 6) and result["no_answer"] == 1
    # figures: VD0 {1,0} VD1 {1,1} VS1 {1} VS2 {0} -> 2 of 4 fully right
    assert (result["figure_accuracy"], result["figures"]) == (0.5, 4)
    # questions: VD q0 {1,1} VD q1 {0,1} VS q0 {1,0} -> 1 of 3 right on every figure
    assert result["question_pair_accuracy"] == pytest.approx(1 / 3) and result["question_pairs"] == 3


def test_hallusionbench_leaves_the_no_image_question_out_of_figure_accuracy():
    def item(figure, answer):
        group = {"category": "VS", "subcategory": "map", "set_id": "2", "figure_id": figure, "question_id": "0"}
        return Item(f"VS/map/2/{figure}/0", "Q?", [], answer, "yesno", group=group)

    items = [item("0", "yes"), item("1", "no")]
    result = score("hallusionbench", items, ["\\boxed{no}", "\\boxed{no}"])
    assert (result["accuracy"], result["figures"], result["figure_accuracy"]) == (0.5, 1, 1.0)
    assert (result["question_pairs"], result["question_pair_accuracy"]) == (1, 0.0)


# ----------------------------------------------------------------------------------------------------
# The MM-Vet judge


GRADES = {  # the test judge's replies, by the response it is shown
    "The square is \\boxed{red}.": "1.0",
    "\\boxed{x = -1}": "0.5",
    "\\boxed{3}": "1.0 (the answer is right)",  # MM-Vet reads the first word
    "It says stop": "1.0",  # no boxed answer: still judged
    "\\boxed{blue}": "0.0",
    "I am not sure": "Score",  # unreadable until asked again for a digit
}


class _JudgeServer:
    """A local OpenAI-compatible endpoint: lists one model; grades the response in the last row of MM-Vet's
    table (``question | ground truth | response | ``) from ``GRADES``, and "0.3" when asked for a digit."""

    def __init__(self):
        self.requests = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self, body):
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):  # noqa: N802
                outer.requests.append((self.path, self.headers.get("Authorization"), None))
                self._reply({"object": "list", "data": [{"id": "judge-model", "object": "model"}]})

            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append((self.path, self.headers.get("Authorization"), body))
                prompt = body["messages"][0]["content"]
                if prompt.endswith(B.MMVET_RETRY):
                    grade = "0.3"
                else:
                    row = prompt.removeprefix(B.MMVET_PROMPT + "\n")
                    grade = GRADES[row.split(" | ")[2]]
                self._reply({"object": "chat.completion", "model": body["model"],
                             "choices": [{"index": 0, "message": {"role": "assistant", "content": grade},
                                          "finish_reason": "stop"}]})

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


SECRET = "sk-test-secret-0123456789"


def test_judge_sees_mm_vets_own_grading_prompt_and_the_whole_response(tmp_path):
    """MM-Vet's evaluator (mm-vet_evaluator.py): its few-shot table, then ``question | ground truth
    (<AND>/<OR> spaced) | response | ``; the grade is the reply's first word."""
    items = items_of("mm-vet")
    completions = ["The square is \\boxed{red}.", "\\boxed{x = -1}", "\\boxed{3}", "It says stop"]
    assert B.MMVET_PROMPT.startswith("Compare the ground truth and prediction from AI models, to give a correctness "
                                     "score for the prediction. <AND> in the ground truth means it is totally right "
                                     "only when all elements in the ground truth are present in the prediction")
    assert "\nWhat is x in the equation? | -1 <AND> -5 | x = -1 or x = -5 | 1.0\n" in B.MMVET_PROMPT
    with _JudgeServer() as server:
        result = score("mm-vet", items, completions, B.Judge(server.url, cache_path=tmp_path / "c.json"),
                       details=True)
    prompts = [body["messages"][0]["content"] for _, _, body in server.requests[1:]]
    assert prompts[1] == B.MMVET_PROMPT + "\nWhat is x in the equation? | -1 <AND> -5 | \\boxed{x = -1} | "
    assert prompts[3] == B.MMVET_PROMPT + "\nWhat is written on the sign? | stop | It says stop | "
    assert [r["score"] for r in result["items"]] == [1.0, 0.5, 1.0, 1.0]
    assert result["accuracy"] == pytest.approx(0.875) and result["no_answer"] == 1  # unboxed, yet judged


def test_an_unreadable_grade_is_asked_again_for_a_digit(tmp_path):
    judge_cache = tmp_path / "c.json"
    with _JudgeServer() as server:
        result = score("mm-vet", items_of("mm-vet")[:1], ["I am not sure"], B.Judge(server.url, "m", judge_cache))
    prompts = [body["messages"][0]["content"] for _, _, body in server.requests]
    temperatures = [body["temperature"] for _, _, body in server.requests]
    assert len(prompts) == 2 and prompts[1] == prompts[0] + B.MMVET_RETRY and temperatures == [0.0, 0.5]
    assert result["accuracy"] == 0.3 and result["judge_requests"] == 2


def test_judge_grades_caches_and_never_reveals_the_key(tmp_path, monkeypatch):
    monkeypatch.setenv(B.JUDGE_KEY_ENV, SECRET)
    items = items_of("mm-vet")
    completions = ["The square is \\boxed{red}.", "\\boxed{x = -1}", "\\boxed{3}", "It says stop"]
    cache = tmp_path / "judge-cache.json"
    with _JudgeServer() as server:
        judge = B.Judge(server.url, cache_path=cache)
        first = score("mm-vet", items, completions, judge, details=True)
        assert [r[0] for r in server.requests] == ["/v1/models"] + ["/v1/chat/completions"] * 4
        assert all(auth == f"Bearer {SECRET}" for _, auth, _ in server.requests)
        assert {body["model"] for _, _, body in server.requests[1:]} == {"judge-model"}
        assert first["judge_requests"] == 5 and "judge: judge-model at " + server.url in first["scoring"]

        sent = len(server.requests)
        again = score("mm-vet", items, completions, judge)  # the same judge: everything cached
        fresh = score("mm-vet", items, completions, B.Judge(server.url + "/chat/completions", "judge-model", cache))
        assert len(server.requests) == sent and again["judge_requests"] == fresh["judge_requests"] == 0
        assert again["accuracy"] == fresh["accuracy"] == first["accuracy"]

        changed = score("mm-vet", items, ["\\boxed{blue}"] + completions[1:], judge)  # a new answer: one request
        assert changed["judge_requests"] == 1 and len(server.requests) == sent + 1

    for result in (first, again, fresh, changed):
        assert SECRET not in json.dumps(result)
    assert SECRET not in cache.read_text() and len(json.loads(cache.read_text())) == 5


def test_judge_ignored_for_deterministic_benchmarks_and_failure_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv(B.JUDGE_KEY_ENV, SECRET)
    dead = B.Judge("http://127.0.0.1:9/v1", model="m", cache_path=tmp_path / "c.json", timeout=5)
    result = score("realworldqa", items_of("realworldqa"), ["\\boxed{B}"] * 3, dead)
    assert dead.requests == 0 and "judge_requests" not in result
    with pytest.raises(B.JudgeError, match=r"mm-vet: judge at http://127.0.0.1:9/v1/chat/completions failed") as e:
        score("mm-vet", items_of("mm-vet"), ["\\boxed{red}"] * 4, dead)
    assert SECRET not in str(e.value)


# ----------------------------------------------------------------------------------------------------
# End to end with the tiny model


@pytest.fixture(scope="module")
def tiny():
    from visplay_core.bootstrap import world_texts
    from visplay_core.model import build_tiny_vlm

    model, processor = build_tiny_vlm(world_texts(200, 0))
    return model.eval(), processor


def _consistent(result, n):
    assert result["n"] == n == len(result["items"])
    statuses = [r["status"] for r in result["items"]]
    assert result["no_answer"] == statuses.count("no_answer")
    assert result["several_answers"] == statuses.count("several")
    assert 0 <= result["no_answer"] + result["several_answers"] <= n
    assert 0.0 <= result["accuracy"] <= 1.0
    assert result["accuracy"] == pytest.approx(sum(r["score"] for r in result["items"]) / n)


def test_evaluate_benchmark_end_to_end_with_the_tiny_model(tiny):
    model, processor = tiny
    result = B.evaluate_benchmark(model, processor, "mmmu", FIXTURES / "mmmu", max_new_tokens=8, batch_size=4,
                                  details=True)
    assert {"benchmark", "accuracy", "n", "no_answer", "several_answers", "scoring", "per_category", "source",
            "split"} <= set(result)
    assert (result["benchmark"], result["split"], result["source"]) == ("mmmu", "validation", str(FIXTURES / "mmmu"))
    _consistent(result, 4)
    hallusion = B.evaluate_benchmark(model, processor, "hallusionbench", str(FIXTURES / "hallusionbench"), limit=4,
                                     max_new_tokens=4, details=True)
    _consistent(hallusion, 4)
    assert hallusion["figures"] == 2 and hallusion["question_pairs"] == 2


def test_text_only_items_are_generated_without_images(tiny):
    """HallusionBench's non_image split has no image: such prompts carry no image, alone or in a batch."""
    items = items_of("hallusionbench", split="non_image")
    assert [len(i.images) for i in items] == [0, 0] and B.messages(items[0])[0]["content"][0]["type"] == "text"
    model, processor = tiny
    result = B.evaluate_benchmark(model, processor, "hallusionbench", FIXTURES / "hallusionbench", split="non_image",
                                  max_new_tokens=4, details=True)
    _consistent(result, 2)
    assert result["figures"] == 0 and result["figure_accuracy"] is None  # VS figure 0 is no figure
