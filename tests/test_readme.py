"""The README's code that teaches must run as written: the 'Write your own layer' section."""
import os
import re

import pytest

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def section_code(title):
    with open(README) as f:
        text = f.read()
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    blocks = re.findall(r"```python\n(.*?)```", text[start:end if end > 0 else None], re.S)
    assert blocks, f"no python block under '## {title}'"
    return "\n".join(blocks)


def test_write_your_own_layer_runs_and_proves_the_layer(capsys):
    namespace = {}
    exec(compile(section_code("Write your own layer"), "README.md", "exec"), namespace)
    errors = eval("mc.gradcheck(layer, x)", namespace)
    assert max(errors.values()) < 1e-8
    net = namespace["net"]
    assert [type(m).__name__ for m in net] == ["Conv2d", "ChannelScale", "ReLU"]


def test_a_wrong_backward_in_the_readme_layer_is_caught():
    """The helper the section shows fails when the backward is wrong."""
    code = section_code("Write your own layer").replace("return dy * self.weight.data[:, None, None]",
                                                        "return dy * self.weight.data[:, None, None] * 1.001")
    with pytest.raises(AssertionError, match="input gradient"):
        exec(compile(code, "README.md", "exec"), {})
