"""The launch-script reader (frameworks/read.py shell_words): bash arrays hold elements, `key=value` ones too
(Megatron-Bridge overrides), and close on `)` however it is written, so the assignments after an array are read."""

from __future__ import annotations

from clusterplan.frameworks.read import shell_words


def _read(text: str) -> tuple[list[str], dict[str, str]]:
    return shell_words(text, "t.sh")


def test_an_array_closing_on_its_own_line():
    words, env = _read('ARGS=(\n    --tensor-model-parallel-size 2\n    model.sequence_parallel=true\n)\nTP=4\n')
    assert words == ["--tensor-model-parallel-size", "2", "model.sequence_parallel=true"] and env == {"TP": "4"}


def test_the_shapes_that_close_on_the_last_element():
    for text in ('ARGS=(\n    --ckpt-format fsdp_dtensor)\nMBS=2\n--micro-batch-size $MBS\n',
                 'EXTRA=(--log-interval 1)  # logging\nMBS=2\n--micro-batch-size $MBS\n',
                 'ARGS=(--num-layers 32 --hidden-size 4096);\nMBS=2\n--micro-batch-size $MBS\n'):
        words, env = _read(text)
        assert env.get("MBS") == "2" and words[-2:] == ["--micro-batch-size", "2"], text
        assert not any(w.endswith(")") or w.endswith(";") for w in words), words


def test_a_quoted_parenthesis_is_an_element_not_the_end():
    words, env = _read("MOE=(\n    --moe-layer-freq '([0]*3+[1]*58)'\n)\nEP=8\n")
    assert words == ["--moe-layer-freq", "([0]*3+[1]*58)"] and env == {"EP": "8"}


def test_declared_arrays_and_assignments():
    words, env = _read('declare -a OV=(\n    mixed_precision=bf16_mixed\n)\nexport TP=2\n')
    assert "mixed_precision=bf16_mixed" in words and env == {"TP": "2"}
