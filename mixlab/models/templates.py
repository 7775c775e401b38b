"""Chat templates with `{% generation %}` markers, so that only assistant answers (and their end token) are trained.

Both templates accept message content as a plain string or as typed parts ({"type": "image"} / {"type": "text"}),
render image parts in place and put the assistant's answer plus its end-of-turn token inside the generation markers.
"""

from __future__ import annotations

import re
from typing import Any

# The tiny model's template: <s><|system|>...<|end|><|user|>...<|end|><|assistant|> ANSWER<|end|>...
# The space before the answer makes an answer word the same token as that word inside a question ("Is the circle
# red?" and the answer "red" both give "Ġred"), as Llama's tokenizer does after "ASSISTANT:". Without it the tiny
# model must learn every value twice, and it never learned to match the value a yes/no question names against the
# image (docs/toyworld.md, "Learnability").
TINY_CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}{%- set parts = [{'type': 'text', 'text': message['content']}] -%}"
    "{%- else -%}{%- set parts = message['content'] -%}{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "<|assistant|>{%- generation -%}{{ ' ' }}"
    "{%- for p in parts -%}{%- if p['type'] == 'text' -%}{{ p['text'] }}{%- endif -%}{%- endfor -%}"
    "<|end|>{%- endgeneration -%}"
    "{%- else -%}"
    "{{ '<|system|>' if message['role'] == 'system' else '<|user|>' }}"
    "{%- for p in parts -%}"
    "{%- if p['type'] == 'image' -%}<image>{%- elif p['type'] == 'text' -%}{{ p['text'] }}{%- endif -%}"
    "{%- endfor -%}<|end|>"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"
)

LLAVA15_SYSTEM_PROMPT = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)

# Vicuna v1 / LLaVA-1.5: "<s>SYSTEM USER: <image>\nQ ASSISTANT: A</s>USER: Q2 ASSISTANT: A2</s>"
LLAVA15_TRAINING_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}{{ messages[0]['content'] }}"
    "{%- else -%}{%- for p in messages[0]['content'] -%}{%- if p['type'] == 'text' -%}{{ p['text'] }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    '{{ "' + LLAVA15_SYSTEM_PROMPT + '" }}'
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if message['content'] is string -%}{%- set parts = [{'type': 'text', 'text': message['content']}] -%}"
    "{%- else -%}{%- set parts = message['content'] -%}{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{ ' ASSISTANT: ' }}{%- generation -%}"
    "{%- for p in parts -%}{%- if p['type'] == 'text' -%}{{ p['text'] }}{%- endif -%}{%- endfor -%}"
    "{{ eos_token }}{%- endgeneration -%}"
    "{%- else -%}"
    "{{ ' USER: ' if loop.first else 'USER: ' }}"
    "{%- for p in parts -%}"
    "{%- if p['type'] == 'image' -%}{{ '<image>\\n' }}{%- elif p['type'] == 'text' -%}{{ p['text'] }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ ' ASSISTANT:' }}{%- endif -%}"
)

_GENERATION = re.compile(r"\{%-?\s*generation\s*-?%\}")


def has_generation_markers(template: str | dict[str, str] | None) -> bool:
    """True when a chat template (or its "default" variant) contains `{% generation %}`."""
    if isinstance(template, dict):
        template = template.get("default")
    return bool(template) and _GENERATION.search(template) is not None  # type: ignore[arg-type]


def training_template(processor: Any) -> str:
    """The processor's chat template if it marks assistant answers for training, else LLAVA15_TRAINING_TEMPLATE."""
    template = getattr(processor, "chat_template", None)
    if template is None:
        template = getattr(getattr(processor, "tokenizer", None), "chat_template", None)
    if has_generation_markers(template):
        return template["default"] if isinstance(template, dict) else template  # type: ignore[return-value]
    return LLAVA15_TRAINING_TEMPLATE
