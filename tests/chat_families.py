"""Tokenizers of the chat-model families users bring, built locally, with their real chat templates.

Tests must show that our token ids equal `tokenizer.apply_chat_template(...)`'s token for token, for the
models people actually train: Llama 3.2, Qwen2.5, Qwen3, Gemma 2 and 3, Mistral v0.3, Phi-3, SmolLM2. No
download is possible at test time, so each family here is a small tokenizer made with the `tokenizers`
library (as lorarlhf/model/tiny.py makes its own) that keeps what matters to the seam between a prompt and
a response: the model's published chat template (copied byte for byte, see each `*_TEMPLATE`), its special
tokens (single ids, with the real flags, e.g. Phi-3's, which swallow the newline after them), its BOS habit
(whether the tokenizer adds BOS, whether the template writes it, or both), its end ids (generation_config),
and its space handling: byte-level BPE (Llama 3, Qwen, SmolLM2), or SentencePiece with a "▁" for each space
and, for Llama-2-style tokenizers (Mistral, Phi-3), a "▁" before the first piece that Gemma does not add.

The vocabularies are small (a few hundred ids) but lossless: byte-level families carry the 256 byte symbols,
SentencePiece families the printable ASCII characters, "▁" merged with each letter and digit (so a prefix
space changes an id, as it does in the real vocabularies), and the 256 byte-fallback pieces <0x00>..<0xFF>.

The templates are data, found in public copies of each model's tokenizer_config.json / chat_template.jinja:
llama.cpp's models/templates/*.jinja (written there by its scripts/get_chat_template.py straight from the
Hub), optimum-intel's COMPLEX_CHAT_TEMPLATES (keyed by the exact template string, so it must be exact), and
projects that vendor a model's tokenizer_config.json; where two independent copies exist they agree.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import GenerationConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from lorarlhf.model.tiny import tiny_llama_config

# --------------------------------------------------------------------------------------------- templates

LLAMA_3_2_TEMPLATE = (
    "{{- bos_token }}\n"
    "{%- if custom_tools is defined %}\n"
    "    {%- set tools = custom_tools %}\n"
    "{%- endif %}\n"
    "{%- if not tools_in_user_message is defined %}\n"
    "    {%- set tools_in_user_message = true %}\n"
    "{%- endif %}\n"
    "{%- if not date_string is defined %}\n"
    "    {%- if strftime_now is defined %}\n"
    '        {%- set date_string = strftime_now("%d %b %Y") %}\n'
    "    {%- else %}\n"
    '        {%- set date_string = "26 Jul 2024" %}\n'
    "    {%- endif %}\n"
    "{%- endif %}\n"
    "{%- if not tools is defined %}\n"
    "    {%- set tools = none %}\n"
    "{%- endif %}\n"
    "\n"
    "{#- This block extracts the system message, so we can slot it into the right place. #}\n"
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {%- set system_message = messages[0]['content']|trim %}\n"
    "    {%- set messages = messages[1:] %}\n"
    "{%- else %}\n"
    '    {%- set system_message = "" %}\n'
    "{%- endif %}\n"
    "\n"
    "{#- System message #}\n"
    '{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}\n'
    "{%- if tools is not none %}\n"
    '    {{- "Environment: ipython\\n" }}\n'
    "{%- endif %}\n"
    '{{- "Cutting Knowledge Date: December 2023\\n" }}\n'
    '{{- "Today Date: " + date_string + "\\n\\n" }}\n'
    "{%- if tools is not none and not tools_in_user_message %}\n"
    '    {{- "You have access to the following functions. To call a function, please respond with JSON '
    'for a function call." }}\n'
    '    {{- \'Respond in the format {"name": function name, "parameters": dictionary of argument name '
    "and its value}.' }}\n"
    '    {{- "Do not use variables.\\n\\n" }}\n'
    "    {%- for t in tools %}\n"
    "        {{- t | tojson(indent=4) }}\n"
    '        {{- "\\n\\n" }}\n'
    "    {%- endfor %}\n"
    "{%- endif %}\n"
    "{{- system_message }}\n"
    '{{- "<|eot_id|>" }}\n'
    "\n"
    "{#- Custom tools are passed in a user message with some extra guidance #}\n"
    "{%- if tools_in_user_message and not tools is none %}\n"
    "    {#- Extract the first user message so we can plug it in here #}\n"
    "    {%- if messages | length != 0 %}\n"
    "        {%- set first_user_message = messages[0]['content']|trim %}\n"
    "        {%- set messages = messages[1:] %}\n"
    "    {%- else %}\n"
    "        {{- raise_exception(\"Cannot put tools in the first user message when there's no first user "
    'message!") }}\n'
    "{%- endif %}\n"
    "    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}\n"
    '    {{- "Given the following functions, please respond with a JSON for a function call " }}\n'
    '    {{- "with its proper arguments that best answers the given prompt.\\n\\n" }}\n'
    '    {{- \'Respond in the format {"name": function name, "parameters": dictionary of argument name '
    "and its value}.' }}\n"
    '    {{- "Do not use variables.\\n\\n" }}\n'
    "    {%- for t in tools %}\n"
    "        {{- t | tojson(indent=4) }}\n"
    '        {{- "\\n\\n" }}\n'
    "    {%- endfor %}\n"
    '    {{- first_user_message + "<|eot_id|>"}}\n'
    "{%- endif %}\n"
    "\n"
    "{%- for message in messages %}\n"
    "    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}\n"
    "        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | "
    "trim + '<|eot_id|>' }}\n"
    "    {%- elif 'tool_calls' in message %}\n"
    "        {%- if not message.tool_calls|length == 1 %}\n"
    '            {{- raise_exception("This model only supports single tool-calls at once!") }}\n'
    "        {%- endif %}\n"
    "        {%- set tool_call = message.tool_calls[0].function %}\n"
    "        {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}\n"
    "        {{- '{\"name\": \"' + tool_call.name + '\", ' }}\n"
    "        {{- '\"parameters\": ' }}\n"
    "        {{- tool_call.arguments | tojson }}\n"
    '        {{- "}" }}\n'
    '        {{- "<|eot_id|>" }}\n'
    '    {%- elif message.role == "tool" or message.role == "ipython" %}\n'
    '        {{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}\n'
    "        {%- if message.content is mapping or message.content is iterable %}\n"
    "            {{- message.content | tojson }}\n"
    "        {%- else %}\n"
    "            {{- message.content }}\n"
    "        {%- endif %}\n"
    '        {{- "<|eot_id|>" }}\n'
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n"
    "{%- endif %}\n"
)


QWEN_2_5_TEMPLATE = (
    "{%- if tools %}\n"
    "    {{- '<|im_start|>system\\n' }}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- messages[0]['content'] }}\n"
    "    {%- else %}\n"
    "        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n"
    "    {%- endif %}\n"
    '    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou '
    'are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}\n'
    "    {%- for tool in tools %}\n"
    '        {{- "\\n" }}\n'
    "        {{- tool | tojson }}\n"
    "    {%- endfor %}\n"
    '    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and '
    'arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, '
    '\\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}\n'
    "{%- else %}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
    "    {%- else %}\n"
    "        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
    "assistant.<|im_end|>\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    '    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or '
    '(message.role == "assistant" and not message.tool_calls) %}\n'
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    '    {%- elif message.role == "assistant" %}\n'
    "        {{- '<|im_start|>' + message.role }}\n"
    "        {%- if message.content %}\n"
    "            {{- '\\n' + message.content }}\n"
    "        {%- endif %}\n"
    "        {%- for tool_call in message.tool_calls %}\n"
    "            {%- if tool_call.function is defined %}\n"
    "                {%- set tool_call = tool_call.function %}\n"
    "            {%- endif %}\n"
    '            {{- \'\\n<tool_call>\\n{"name": "\' }}\n'
    "            {{- tool_call.name }}\n"
    '            {{- \'", "arguments": \' }}\n'
    "            {{- tool_call.arguments | tojson }}\n"
    "            {{- '}\\n</tool_call>' }}\n"
    "        {%- endfor %}\n"
    "        {{- '<|im_end|>\\n' }}\n"
    '    {%- elif message.role == "tool" %}\n'
    '        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}\n'
    "            {{- '<|im_start|>user' }}\n"
    "        {%- endif %}\n"
    "        {{- '\\n<tool_response>\\n' }}\n"
    "        {{- message.content }}\n"
    "        {{- '\\n</tool_response>' }}\n"
    '        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}\n'
    "            {{- '<|im_end|>\\n' }}\n"
    "        {%- endif %}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n"
)


QWEN_3_TEMPLATE = (
    "{%- if tools %}\n"
    "    {{- '<|im_start|>system\\n' }}\n"
    "    {%- if messages[0].role == 'system' %}\n"
    "        {{- messages[0].content + '\\n\\n' }}\n"
    "    {%- endif %}\n"
    '    {{- "# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are '
    'provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}\n'
    "    {%- for tool in tools %}\n"
    '        {{- "\\n" }}\n'
    "        {{- tool | tojson }}\n"
    "    {%- endfor %}\n"
    '    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and '
    'arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, '
    '\\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}\n'
    "{%- else %}\n"
    "    {%- if messages[0].role == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endif %}\n"
    "{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}\n"
    "{%- for message in messages[::-1] %}\n"
    "    {%- set index = (messages|length - 1) - loop.index0 %}\n"
    '    {%- if ns.multi_step_tool and message.role == "user" and '
    "not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) "
    "%}\n"
    "        {%- set ns.multi_step_tool = false %}\n"
    "        {%- set ns.last_query_index = index %}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- for message in messages %}\n"
    '    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}\n'
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    '    {%- elif message.role == "assistant" %}\n'
    "        {%- set content = message.content %}\n"
    "        {%- set reasoning_content = '' %}\n"
    "        {%- if message.reasoning_content is defined and message.reasoning_content is not none %}\n"
    "            {%- set reasoning_content = message.reasoning_content %}\n"
    "        {%- else %}\n"
    "            {%- if '</think>' in message.content %}\n"
    "                {%- set content = message.content.split('</think>')[-1].lstrip('\\n') %}\n"
    "                "
    "{%- set reasoning_content = "
    "message.content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}\n"
    "            {%- endif %}\n"
    "        {%- endif %}\n"
    "        {%- if loop.index0 > ns.last_query_index %}\n"
    "            {%- if loop.last or (not loop.last and reasoning_content) %}\n"
    "                "
    "{{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') + "
    "'\\n</think>\\n\\n' + content.lstrip('\\n') }}\n"
    "            {%- else %}\n"
    "                {{- '<|im_start|>' + message.role + '\\n' + content }}\n"
    "            {%- endif %}\n"
    "        {%- else %}\n"
    "            {{- '<|im_start|>' + message.role + '\\n' + content }}\n"
    "        {%- endif %}\n"
    "        {%- if message.tool_calls %}\n"
    "            {%- for tool_call in message.tool_calls %}\n"
    "                {%- if (loop.first and content) or (not loop.first) %}\n"
    "                    {{- '\\n' }}\n"
    "                {%- endif %}\n"
    "                {%- if tool_call.function %}\n"
    "                    {%- set tool_call = tool_call.function %}\n"
    "                {%- endif %}\n"
    '                {{- \'<tool_call>\\n{"name": "\' }}\n'
    "                {{- tool_call.name }}\n"
    '                {{- \'", "arguments": \' }}\n'
    "                {%- if tool_call.arguments is string %}\n"
    "                    {{- tool_call.arguments }}\n"
    "                {%- else %}\n"
    "                    {{- tool_call.arguments | tojson }}\n"
    "                {%- endif %}\n"
    "                {{- '}\\n</tool_call>' }}\n"
    "            {%- endfor %}\n"
    "        {%- endif %}\n"
    "        {{- '<|im_end|>\\n' }}\n"
    '    {%- elif message.role == "tool" %}\n'
    '        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}\n'
    "            {{- '<|im_start|>user' }}\n"
    "        {%- endif %}\n"
    "        {{- '\\n<tool_response>\\n' }}\n"
    "        {{- message.content }}\n"
    "        {{- '\\n</tool_response>' }}\n"
    '        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}\n'
    "            {{- '<|im_end|>\\n' }}\n"
    "        {%- endif %}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "    {%- if enable_thinking is defined and enable_thinking is false %}\n"
    "        {{- '<think>\\n\\n</think>\\n\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endif %}"
)


GEMMA_2_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}"
    "{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\n"
    "' + message['content'] | trim + '<end_of_turn>\n"
    "' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n"
    "'}}{% endif %}"
)


GEMMA_3_TEMPLATE = (
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\n"
    "\n"
    "' -%}\n"
    "    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n"
    "\n"
    "' -%}\n"
    "    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    '    {%- set first_user_prefix = "" -%}\n'
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    '        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") '
    "}}\n"
    "    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n"
    '        {%- set role = "model" -%}\n'
    "    {%- else -%}\n"
    "        {%- set role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\n"
    '\' + (first_user_prefix if loop.first else "") }}\n'
    "    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n"
    "        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n"
    "                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n"
    "                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n"
    "        {%- endfor -%}\n"
    "    {%- else -%}\n"
    '        {{ raise_exception("Invalid content type") }}\n'
    "    {%- endif -%}\n"
    "    {{ '<end_of_turn>\n"
    "' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\n"
    "'}}\n"
    "{%- endif -%}\n"
)


MISTRAL_V0_3_TEMPLATE = (
    '{%- if messages[0]["role"] == "system" %}\n'
    '    {%- set system_message = messages[0]["content"] %}\n'
    "    {%- set loop_messages = messages[1:] %}\n"
    "{%- else %}\n"
    "    {%- set loop_messages = messages %}\n"
    "{%- endif %}\n"
    "{%- if not tools is defined %}\n"
    "    {%- set tools = none %}\n"
    "{%- endif %}\n"
    '{%- set user_messages = loop_messages | selectattr("role", "equalto", "user") | list %}\n'
    "\n"
    "{#- This block checks for alternating user/assistant messages, skipping tool calling messages #}\n"
    "{%- set ns = namespace() %}\n"
    "{%- set ns.index = 0 %}\n"
    "{%- for message in loop_messages %}\n"
    '    {%- if not (message.role == "tool" or message.role == "tool_results" or (message.tool_calls is '
    "defined and message.tool_calls is not none)) %}\n"
    '        {%- if (message["role"] == "user") != (ns.index % 2 == 0) %}\n'
    "            "
    '{{- raise_exception("After the optional system message, conversation roles must alternate '
    'user/assistant/user/assistant/...") }}\n'
    "        {%- endif %}\n"
    "        {%- set ns.index = ns.index + 1 %}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "\n"
    "{{- bos_token }}\n"
    "{%- for message in loop_messages %}\n"
    '    {%- if message["role"] == "user" %}\n'
    "        {%- if tools is not none and (message == user_messages[-1]) %}\n"
    '            {{- "[AVAILABLE_TOOLS] [" }}\n'
    "            {%- for tool in tools %}\n"
    "                {%- set tool = tool.function %}\n"
    '                {{- \'{"type": "function", "function": {\' }}\n'
    '                {%- for key, val in tool.items() if key != "return" %}\n'
    "                    {%- if val is string %}\n"
    "                        {{- '\"' + key + '\": \"' + val + '\"' }}\n"
    "                    {%- else %}\n"
    "                        {{- '\"' + key + '\": ' + val|tojson }}\n"
    "                    {%- endif %}\n"
    "                    {%- if not loop.last %}\n"
    '                        {{- ", " }}\n'
    "                    {%- endif %}\n"
    "                {%- endfor %}\n"
    '                {{- "}}" }}\n'
    "                {%- if not loop.last %}\n"
    '                    {{- ", " }}\n'
    "                {%- else %}\n"
    '                    {{- "]" }}\n'
    "                {%- endif %}\n"
    "            {%- endfor %}\n"
    '            {{- "[/AVAILABLE_TOOLS]" }}\n'
    "            {%- endif %}\n"
    "        {%- if loop.last and system_message is defined %}\n"
    '            {{- "[INST] " + system_message + "\\n\\n" + message["content"] + "[/INST]" }}\n'
    "        {%- else %}\n"
    '            {{- "[INST] " + message["content"] + "[/INST]" }}\n'
    "        {%- endif %}\n"
    "    {%- elif message.tool_calls is defined and message.tool_calls is not none %}\n"
    '        {{- "[TOOL_CALLS] [" }}\n'
    "        {%- for tool_call in message.tool_calls %}\n"
    "            {%- set out = tool_call.function|tojson %}\n"
    "            {{- out[:-1] }}\n"
    "            {%- if not tool_call.id is defined or tool_call.id|length != 9 %}\n"
    "                "
    '{{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}\n'
    "            {%- endif %}\n"
    "            {{- ', \"id\": \"' + tool_call.id + '\"}' }}\n"
    "            {%- if not loop.last %}\n"
    '                {{- ", " }}\n'
    "            {%- else %}\n"
    '                {{- "]" + eos_token }}\n'
    "            {%- endif %}\n"
    "        {%- endfor %}\n"
    '    {%- elif message["role"] == "assistant" %}\n'
    '        {{- " " + message["content"]|trim + eos_token}}\n'
    '    {%- elif message["role"] == "tool_results" or message["role"] == "tool" %}\n'
    "        {%- if message.content is defined and message.content.content is defined %}\n"
    "            {%- set content = message.content.content %}\n"
    "        {%- else %}\n"
    "            {%- set content = message.content %}\n"
    "        {%- endif %}\n"
    '        {{- \'[TOOL_RESULTS] {"content": \' + content|string + ", " }}\n'
    "        {%- if not message.tool_call_id is defined or message.tool_call_id|length != 9 %}\n"
    '            {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}\n'
    "        {%- endif %}\n"
    "        {{- '\"call_id\": \"' + message.tool_call_id + '\"}[/TOOL_RESULTS]' }}\n"
    "    {%- else %}\n"
    '        {{- raise_exception("Only user and assistant roles are supported, with the exception of an '
    'initial optional system message!") }}\n'
    "    {%- endif %}\n"
    "{%- endfor %}\n"
)


PHI_3_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n"
    "' + message['content'] + '<|end|>\n"
    "'}}{% elif message['role'] == 'user' %}{{'<|user|>\n"
    "' + message['content'] + '<|end|>\n"
    "'}}{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n"
    "' + message['content'] + '<|end|>\n"
    "'}}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n"
    "' }}{% else %}{{ eos_token }}{% endif %}"
)


SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n"
    "' + message['content'] + '<|im_end|>' + '\n"
    "'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n"
    "' }}{% endif %}"
)


# ---------------------------------------------------------------------------------------------- families


@dataclass(frozen=True)
class Family:
    """What one model family's tokenizer, template and generation_config do, as the real files have it."""

    name: str
    model_id: str
    """The Hub model whose tokenizer_config.json, tokenizer.json and generation_config.json this copies."""
    template_source: str
    """Where the template text was found."""
    chat_template: str
    special_tokens: tuple[str, ...]
    """The special tokens the template and generation use, in the real tokenizer's id order."""
    bos_token: str | None
    eos_token: str
    """The tokenizer's eos_token (tokenizer_config.json), not always the token that ends a turn."""
    pad_token: str | None
    """None where the model has no pad token (Llama 3.2, Mistral): code must cope without one."""
    tokenizer_adds_bos: bool
    """Whether tokenizer(text) (add_special_tokens=True) puts BOS first."""
    template_writes_bos: bool
    """Whether the rendered conversation starts with the BOS string."""
    generation_eos_ids: tuple[str, ...]
    """The tokens generation_config.json lists as eos_token_id, by name, in its order."""
    generation_bos: str | None
    generation_pad: str | None
    end_of_turn: str
    """The token that closes an assistant turn in the render."""
    after_end_of_turn: str
    """What the template writes right after end_of_turn ("" or "\\n")."""
    trims: str
    """Which message contents the template strips of surrounding whitespace: "all", "assistant" or "none"."""
    sentencepiece: bool
    """SentencePiece-style ("▁" for a space, byte fallback) rather than byte-level BPE."""
    prefix_space: bool = False
    """Whether a "▁" is put before the first piece of the text (Llama-2 style, prepend_scheme="first")."""
    leading_specials: int = 0
    """How many of special_tokens take the first ids, before the base vocabulary (the rest follow it)."""
    added_tokens: tuple[str, ...] = ()
    """Single-id tokens that are not special (skip_special_tokens keeps them): Qwen3's <think>."""
    rstrip_tokens: tuple[str, ...] = ()
    """Special tokens that take the whitespace after them into themselves (Phi-3: "<|end|>\\n" is one id)."""
    unk_token: str | None = None
    supports_system: bool = True
    """False where the template raises on a system message (Gemma 2)."""
    template_kwargs: Mapping[str, str] = field(default_factory=dict)
    """Extra template variables that make a render deterministic (Llama 3.2 writes today's date otherwise)."""


LLAMA_3 = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
)
CHATML = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
GEMMA = ("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>")
PHI_3_TURNS = ("<|assistant|>", "<|system|>", "<|end|>", "<|user|>")

FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        Family(
            name="llama-3.2",
            model_id="meta-llama/Llama-3.2-3B-Instruct",
            template_source="llama.cpp models/templates/meta-llama-Llama-3.2-3B-Instruct.jinja",
            chat_template=LLAMA_3_2_TEMPLATE,
            special_tokens=LLAMA_3,
            bos_token="<|begin_of_text|>",
            eos_token="<|eot_id|>",
            pad_token=None,
            tokenizer_adds_bos=True,
            template_writes_bos=True,
            generation_eos_ids=("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"),  # 128001, 128008, 128009
            generation_bos="<|begin_of_text|>",
            generation_pad=None,
            end_of_turn="<|eot_id|>",
            after_end_of_turn="",
            trims="all",
            sentencepiece=False,
            template_kwargs={"date_string": "26 Jul 2024"},  # the template's own fallback date
        ),
        Family(
            name="qwen2.5",
            model_id="Qwen/Qwen2.5-7B-Instruct",
            template_source="llama.cpp models/templates/Qwen-Qwen2.5-7B-Instruct.jinja",
            chat_template=QWEN_2_5_TEMPLATE,
            special_tokens=CHATML,
            bos_token=None,
            eos_token="<|im_end|>",
            pad_token="<|endoftext|>",
            tokenizer_adds_bos=False,
            template_writes_bos=False,
            generation_eos_ids=("<|im_end|>", "<|endoftext|>"),  # 151645, 151643
            generation_bos="<|endoftext|>",  # bos_token_id 151643, though the tokenizer has no bos_token
            generation_pad="<|endoftext|>",
            end_of_turn="<|im_end|>",
            after_end_of_turn="\n",
            trims="none",
            sentencepiece=False,
        ),
        Family(
            name="qwen3",
            model_id="Qwen/Qwen3-0.6B",
            template_source="llama.cpp models/templates/Qwen-Qwen3-0.6B.jinja (= optimum-intel's # Qwen3 key)",
            chat_template=QWEN_3_TEMPLATE,
            special_tokens=CHATML,
            bos_token=None,
            eos_token="<|im_end|>",
            pad_token="<|endoftext|>",
            tokenizer_adds_bos=False,
            template_writes_bos=False,
            generation_eos_ids=("<|im_end|>", "<|endoftext|>"),  # 151645, 151643
            generation_bos="<|endoftext|>",
            generation_pad="<|endoftext|>",
            end_of_turn="<|im_end|>",
            after_end_of_turn="\n",
            trims="none",
            sentencepiece=False,
            added_tokens=("<think>", "</think>"),  # 151667, 151668: "special": false in tokenizer_config.json
        ),
        Family(
            name="gemma-2",
            model_id="google/gemma-2-2b-it",
            template_source="llama.cpp models/templates/google-gemma-2-2b-it.jinja",
            chat_template=GEMMA_2_TEMPLATE,
            special_tokens=GEMMA,
            bos_token="<bos>",
            eos_token="<eos>",
            pad_token="<pad>",
            tokenizer_adds_bos=True,
            template_writes_bos=True,
            generation_eos_ids=("<eos>", "<end_of_turn>"),  # [1, 107]
            generation_bos="<bos>",
            generation_pad="<pad>",
            end_of_turn="<end_of_turn>",
            after_end_of_turn="\n",
            trims="all",
            sentencepiece=True,
            leading_specials=4,  # <pad> 0, <eos> 1, <bos> 2, <unk> 3
            unk_token="<unk>",
            supports_system=False,  # raise_exception('System role not supported')
        ),
        Family(
            name="gemma-3",
            model_id="google/gemma-3-4b-it",
            template_source="tokenizer_config.json of google/gemma-3-4b-it, as vendored by BFCL's Gemma handler "
            "and by a Gemma 3 fixture generator (the two agree)",
            chat_template=GEMMA_3_TEMPLATE,
            special_tokens=GEMMA,
            bos_token="<bos>",
            eos_token="<eos>",
            pad_token="<pad>",
            tokenizer_adds_bos=True,
            template_writes_bos=True,
            generation_eos_ids=("<eos>", "<end_of_turn>"),  # [1, 106]
            generation_bos="<bos>",
            generation_pad="<pad>",
            end_of_turn="<end_of_turn>",
            after_end_of_turn="\n",
            trims="all",
            sentencepiece=True,
            leading_specials=4,
            unk_token="<unk>",
        ),
        Family(
            name="mistral",
            model_id="mistralai/Mistral-7B-Instruct-v0.3",
            template_source="optimum-intel optimum/exporters/openvino/utils.py COMPLEX_CHAT_TEMPLATES, "
            "key under '# Mistral-7B-Instruct-v0.3'",
            chat_template=MISTRAL_V0_3_TEMPLATE,
            special_tokens=("<unk>", "<s>", "</s>", "[INST]", "[/INST]"),  # 0-4; [INST] is a control token
            bos_token="<s>",
            eos_token="</s>",
            pad_token=None,
            tokenizer_adds_bos=True,
            template_writes_bos=True,
            generation_eos_ids=("</s>",),  # eos_token_id 2
            generation_bos="<s>",
            generation_pad=None,
            end_of_turn="</s>",
            after_end_of_turn="",
            trims="assistant",
            sentencepiece=True,
            prefix_space=True,
            leading_specials=5,
            unk_token="<unk>",
        ),
        Family(
            name="phi-3",
            model_id="microsoft/Phi-3-mini-4k-instruct",
            template_source="tokenizer_config.json of microsoft/Phi-3-mini-4k-instruct (as quoted by three "
            "projects); the same text as llama.cpp's microsoft-Phi-3.5-mini-instruct.jinja without its "
            "\"and message['content']\" test",
            chat_template=PHI_3_TEMPLATE,
            special_tokens=("<unk>", "<s>", "<|endoftext|>", *PHI_3_TURNS),  # <|endoftext|> 32000 onwards
            bos_token="<s>",
            eos_token="<|endoftext|>",
            pad_token="<|endoftext|>",
            tokenizer_adds_bos=False,  # "add_bos_token": false, and the template writes no BOS either
            template_writes_bos=False,
            generation_eos_ids=("<|endoftext|>", "<|assistant|>", "<|end|>"),  # [32000, 32001, 32007]
            generation_bos="<s>",
            generation_pad="<|endoftext|>",
            end_of_turn="<|end|>",
            after_end_of_turn="\n",  # written, but the tokenizer folds it into <|end|> (rstrip)
            trims="none",
            sentencepiece=True,
            prefix_space=True,
            leading_specials=2,
            rstrip_tokens=PHI_3_TURNS,
            unk_token="<unk>",
        ),
        Family(
            name="smollm2",
            model_id="HuggingFaceTB/SmolLM2-1.7B-Instruct",
            template_source="tokenizer_config.json of HuggingFaceTB/SmolLM2-*-Instruct, as logged by a "
            "llama.cpp bridge and patched by a training collator (the two agree)",
            chat_template=SMOLLM2_TEMPLATE,
            special_tokens=CHATML,  # ids 0, 1, 2
            bos_token="<|im_start|>",
            eos_token="<|im_end|>",
            pad_token="<|im_end|>",
            tokenizer_adds_bos=False,
            # bos_token is <|im_start|>, so every render starts with the BOS id, as the opener of its first
            # turn: code that strips a leading BOS (to avoid a double one) would cut SmolLM2's first turn.
            template_writes_bos=True,
            generation_eos_ids=("<|im_end|>",),  # eos_token_id 2
            generation_bos="<|im_start|>",
            generation_pad="<|im_end|>",
            end_of_turn="<|im_end|>",
            after_end_of_turn="\n",
            trims="none",
            sentencepiece=False,
            leading_specials=3,
            unk_token="<|endoftext|>",
        ),
    )
}

# The characters a SentencePiece family has as pieces of their own; all else falls back to bytes.
_SP_CHARS = [c for c in string.printable if not c.isspace()]
_SP_MERGES = [("▁", c) for c in string.ascii_letters + string.digits]


def _base_vocab(family: Family) -> tuple[list[str], list[tuple[str, str]]]:
    """The ordinary pieces (no added tokens) and the merges of the family's BPE."""
    if not family.sentencepiece:
        return sorted(pre_tokenizers.ByteLevel.alphabet()), []  # sorted: the set's order varies by run
    pieces = [f"<0x{b:02X}>" for b in range(256)] + ["▁", *_SP_CHARS]
    if family.name.startswith("gemma"):
        pieces.append("\n")  # Gemma has a newline piece; Llama-2-style vocabularies use <0x0A>
    return pieces + [a + b for a, b in _SP_MERGES], _SP_MERGES


def make_tokenizer(name: str) -> PreTrainedTokenizerFast:
    """The family's tokenizer: its special tokens, BOS habit, space handling and real chat template."""
    family = FAMILIES[name]
    pieces, merges = _base_vocab(family)
    ordered = [
        *family.special_tokens[: family.leading_specials],
        *pieces,
        *family.special_tokens[family.leading_specials :],
        *family.added_tokens,
    ]
    vocab = {token: i for i, token in enumerate(ordered)}
    backend = Tokenizer(
        models.BPE(
            vocab=vocab,
            merges=merges,
            unk_token=family.unk_token if family.sentencepiece else None,
            byte_fallback=family.sentencepiece,
            fuse_unk=family.sentencepiece,
        )
    )
    if not family.sentencepiece:
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
    elif family.prefix_space:
        # Llama-2 / Mistral / Phi-3 as transformers converts them with legacy=False: a "▁" before the
        # first piece of the text only, none after a special token.
        backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
        backend.decoder = decoders.Sequence(
            [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
        )
    else:
        # Gemma: spaces become "▁" and nothing is prepended.
        backend.normalizer = normalizers.Replace(" ", "▁")
        backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    if family.tokenizer_adds_bos:
        bos = family.bos_token
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, vocab[bos])]
        )
    backend.add_special_tokens(
        [
            AddedToken(token, special=True, normalized=False, rstrip=token in family.rstrip_tokens)
            for token in family.special_tokens
        ]
    )
    backend.add_tokens([AddedToken(token, special=False, normalized=False) for token in family.added_tokens])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=family.bos_token,
        eos_token=family.eos_token,
        pad_token=family.pad_token,
        unk_token=family.unk_token,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = family.chat_template
    return tokenizer


def generation_config(name: str, tokenizer: PreTrainedTokenizerFast) -> GenerationConfig:
    """The family's generation_config.json: its end ids (a list, as the real files write them), BOS, pad."""
    family = FAMILIES[name]
    ids = tokenizer.convert_tokens_to_ids
    fields = {"eos_token_id": [ids(token) for token in family.generation_eos_ids]}
    if family.generation_bos is not None:
        fields["bos_token_id"] = ids(family.generation_bos)
    if family.generation_pad is not None:
        fields["pad_token_id"] = ids(family.generation_pad)
    return GenerationConfig(**fields)


def make_model_dir(name: str, path: str | Path, *, seed: int = 0) -> Path:
    """A tiny random Llama with the family's tokenizer and generation_config, loadable by from_pretrained."""
    path = Path(path)
    tokenizer = make_tokenizer(name)
    generation = generation_config(name, tokenizer)
    eos = generation.eos_token_id
    config = tiny_llama_config(
        vocab_size=len(tokenizer),
        bos_token_id=generation.bos_token_id,
        eos_token_id=eos if len(eos) > 1 else eos[0],
        pad_token_id=generation.pad_token_id,
    )
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    finally:
        torch.random.set_rng_state(generator_state)  # the caller's random stream is not ours to move
    model.generation_config = generation
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
