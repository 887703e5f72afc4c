"""EleutherAI's lm-evaluation-harness scores the served model through ``local-completions`` exactly as its
``hf`` backend scores the model directory: per-sample log-likelihoods (multiple choice) and generations."""

import json

import pytest

from conftest import running_server

pytestmark = pytest.mark.integration

MC_TASK = """task: shipyard_tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
"""
GEN_TASK = """task: shipyard_tiny_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{choices[answer]}}}}"
generation_kwargs:
  until: ["\\n\\n"]
  max_gen_toks: 8
  do_sample: false
metric_list:
  - metric: bleu
"""
ROWS = [("The Python language is", [" a snake", " a programming language", " a file"], 1),
        ("A list comprehension builds", [" a list", " a house", " nothing"], 0),
        ("To open a file, call", [" open()", " close()", " print()"], 0),
        ("Exceptions are raised by", [" raise", " import", " def"], 0),
        ("A dictionary maps keys to", [" values", " lists", " files"], 0),
        ("The with statement manages", [" resources", " colours", " numbers"], 0)]


@pytest.fixture(scope="module")
def server(engine_model):
    model, engine = engine_model
    with running_server(model, "--max-new-tokens", "8", *engine) as (port, name, _):
        yield port, name


def _samples(result: dict, task: str) -> list:
    return sorted(result["samples"][task], key=lambda s: s["doc_id"])


def test_the_endpoint_scores_as_the_model_directory(server, tiny_base, tmp_path, monkeypatch):
    import lm_eval
    from lm_eval.tasks import TaskManager

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n" for q, c, a in ROWS))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "mc.yaml").write_text(MC_TASK.format(data=data))
    (tasks / "gen.yaml").write_text(GEN_TASK.format(data=data))
    names = ["shipyard_tiny_mc", "shipyard_tiny_gen"]
    port, name = server

    def run(model: str, args: str) -> dict:
        return lm_eval.simple_evaluate(model=model, model_args=args, tasks=names, task_manager=TaskManager(
            include_path=str(tasks)), log_samples=True, batch_size=1, random_seed=0, numpy_random_seed=0,
            torch_random_seed=0, fewshot_random_seed=0)

    hf = run("hf", f"pretrained={tiny_base},dtype=float32,device=cpu")
    api = run("local-completions", f"model={name},base_url=http://127.0.0.1:{port}/openai/v1/completions,"
                                   f"tokenizer_backend=huggingface,tokenizer={tiny_base},num_concurrent=1,"
                                   f"max_retries=1,tokenized_requests=True,max_length=128")
    assert len(_samples(api, "shipyard_tiny_mc")) == len(_samples(hf, "shipyard_tiny_gen")) == len(ROWS)
    # through llama.cpp (f32 GGUF) the sums differ by ~1e-5 relative: its own matmul order
    for a, b in zip(_samples(hf, "shipyard_tiny_mc"), _samples(api, "shipyard_tiny_mc"), strict=True):
        assert [x[0][0] for x in a["resps"]] == pytest.approx([x[0][0] for x in b["resps"]], rel=1e-4, abs=1e-4)
        assert [x[0][1] for x in a["resps"]] == [x[0][1] for x in b["resps"]]  # is_greedy agrees too
    gens = [(s["filtered_resps"], t["filtered_resps"]) for s, t in
            zip(_samples(hf, "shipyard_tiny_gen"), _samples(api, "shipyard_tiny_gen"), strict=True)]
    assert all(a == b for a, b in gens), gens
    assert hf["results"]["shipyard_tiny_mc"]["acc,none"] == api["results"]["shipyard_tiny_mc"]["acc,none"]
