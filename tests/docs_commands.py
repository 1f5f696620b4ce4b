"""The commands shown in README.md and docs/*.md, extracted for tests/test_docs_commands.py.

Two kinds of places hold commands:

* fenced code blocks (no language, ``bash``, ``sh``, ``shell``): every line that starts a ``python``/``bash``
  command (after ``VAR=value`` assignments), with its ``\\`` continuation lines, without its ``#`` comment; a
  ``for VAR in A B C; do`` line makes ``$VAR`` stand for each of its values;
* inline code in a paragraph or table row: a whole command (``python tools/x.py ...``), a ``--cfg-options ...`` span,
  or a ``key.path=value`` span in a paragraph that mentions ``--cfg-options``.

Each command keeps the configs mentioned in its Markdown section (``configs/...py``): a ``--cfg-options`` span shown
without a config applies to those, or to every config when the section names none.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

FENCE = re.compile(r'^\s*```\s*([\w-]*)\s*$')
SHELL_LANGUAGES = ('', 'bash', 'sh', 'shell', 'console')
HEADING = re.compile(r'^#{1,6} ')
CONFIG_PATH = re.compile(r'configs/[\w./-]+?\.py')
COMMAND_START = re.compile(r'^(?:\$ )?(?:[A-Z_]+=\S* )*(?:python|bash|\.venv/bin/python)\s')
INLINE_CODE = re.compile(r'`([^`]+)`')
FOR_LOOP = re.compile(r'^for (\w+) in (.+?); do$')
OPTION_SPAN = re.compile(r'^\+?[a-z_]\w*(?:\.\w+)+=\S+$')


@dataclass
class DocCommand:
    """A command as the documentation shows it."""

    where: str  #: ``file:line``
    text: str  #: the command (or ``--cfg-options ...`` fragment) as written, comments removed
    section_configs: List[str] = field(default_factory=list)
    inline: bool = False
    file_configs: List[str] = field(default_factory=list)  #: the configs its whole file mentions

    @property
    def argv(self) -> List[str]:
        """The words, without leading ``VAR=value`` assignments and ``$ ``."""
        words = shlex.split(self.text.lstrip('$ '))
        while words and re.match(r'^[A-Z_]+=', words[0]):
            words.pop(0)
        return words


def _strip_comment(line: str) -> str:
    """``line`` without a trailing shell comment (a ``#`` outside quotes, after white space)."""
    quote = None
    for index, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in '\'"':
            quote = char
        elif char == '#' and (index == 0 or line[index - 1].isspace()):
            return line[:index].rstrip()
    return line.rstrip()


def _sections(lines: List[str]) -> List[Tuple[int, int, List[str]]]:
    """``(first line, last line, configs mentioned)`` of each Markdown section (0-based, inclusive)."""
    starts = [i for i, line in enumerate(lines) if HEADING.match(line)] or [0]
    if starts[0] != 0:
        starts.insert(0, 0)
    sections = []
    for number, start in enumerate(starts):
        end = starts[number + 1] - 1 if number + 1 < len(starts) else len(lines) - 1
        configs = sorted(set(CONFIG_PATH.findall('\n'.join(lines[start:end + 1]))))
        sections.append((start, end, configs))
    return sections


def _configs_at(sections, index: int) -> List[str]:
    return next(configs for start, end, configs in sections if start <= index <= end)


def _block_commands(path: Path, lines: List[str], sections) -> Iterator[DocCommand]:
    language, pending, pending_line, loops = None, '', 0, {}
    quoted, quoted_line = '', 0
    for index, raw in enumerate(lines):
        fence = FENCE.match(raw)
        if fence:
            language = fence.group(1) if language is None else None
            loops = {}
            continue
        if language is None or language not in SHELL_LANGUAGES:
            continue
        if quoted:  # inside a quote opened on an earlier line (python -c "...")
            quoted += '\n' + raw
            if not _unbalanced(quoted):
                for text in _expand_loops(quoted, loops):
                    yield DocCommand(f'{path.name}:{quoted_line + 1}', text, _configs_at(sections, quoted_line))
                quoted = ''
            continue
        line = _strip_comment(raw).strip()
        if COMMAND_START.match(line + ' ') and _unbalanced(line):
            quoted, quoted_line = line, index
            continue
        if pending:
            pending += ' ' + line.rstrip('\\').strip()
            if line.endswith('\\'):
                continue
            line, index, pending = pending, pending_line, ''
        elif line.endswith('\\'):
            pending, pending_line = line.rstrip('\\').strip(), index
            continue
        loop = FOR_LOOP.match(line)
        if loop:
            loops[loop.group(1)] = shlex.split(loop.group(2))
            continue
        if line == 'done':
            loops = {}
            continue
        if not COMMAND_START.match(line + ' '):
            continue
        for text in _expand_loops(line, loops):
            yield DocCommand(f'{path.name}:{index + 1}', text, _configs_at(sections, index))


def _unbalanced(text: str) -> bool:
    """Whether ``text`` leaves a shell quote open."""
    try:
        shlex.split(text.rstrip().rstrip('\\'))
    except ValueError:
        return True
    return False


def _expand_loops(line: str, loops: Dict[str, List[str]]) -> List[str]:
    expanded = [line]
    for name, values in loops.items():
        if f'${name}' in line:
            expanded = [text.replace(f'${name}', value) for text in expanded for value in values]
    return expanded


def _paragraphs(lines: List[str]) -> Iterator[Tuple[int, str]]:
    """``(first line index, text)`` of each paragraph or table row outside code blocks."""
    in_block, start, buffer = False, 0, []
    for index, line in enumerate(lines + ['']):
        if FENCE.match(line):
            in_block = not in_block
        stripped = line.strip()
        if in_block or FENCE.match(line) or not stripped or stripped.startswith('|'):
            if buffer:
                yield start, ' '.join(buffer)
                buffer = []
            if stripped.startswith('|') and not in_block:
                yield index, stripped
            continue
        if not buffer:
            start = index
        buffer.append(stripped)


def _inline_commands(path: Path, lines: List[str], sections) -> Iterator[DocCommand]:
    for index, text in _paragraphs(lines):
        mentions_options = '--cfg-options' in text
        for span in INLINE_CODE.findall(text):
            span = span.strip()
            options = span.split()[1:] if span.startswith('--cfg-options ') else None
            if options is not None and not all(OPTION_SPAN.match(word.strip('"')) or is_placeholder(word)
                                               for word in options):
                continue  # an error message quoting an option, not an option
            if re.match(r'^(?:python|bash) (?:tools|demo)/\S+\.(?:py|sh)\b', span) or options is not None:
                yield DocCommand(f'{path.name}:{index + 1}', span, _configs_at(sections, index), inline=True)
            elif mentions_options and OPTION_SPAN.match(span.strip('"')):
                yield DocCommand(f'{path.name}:{index + 1}', f'--cfg-options {span}', _configs_at(sections, index),
                                 inline=True)


def doc_commands(files: List[Path]) -> List[DocCommand]:
    """Every command of ``files`` (see the module docstring)."""
    commands = []
    for path in files:
        lines = path.read_text(encoding='utf-8').splitlines()
        sections = _sections(lines)
        found = [*_block_commands(path, lines, sections), *_inline_commands(path, lines, sections)]
        mentioned = sorted(set(CONFIG_PATH.findall('\n'.join(lines))))
        for command in found:
            command.file_configs = mentioned
        commands.extend(found)
    return commands


#: Words that stand for something the reader fills in.
PLACEHOLDER = re.compile(r'^(?:[A-Z][A-Z0-9_]*(?:\.\w+)?|\S*\.\.\.\S*|\+?(?:key|k|KEY|K)=(?:value|v|VALUE|V))$')


def is_placeholder(word: str) -> bool:
    return bool(PLACEHOLDER.match(word)) or '[' in word and ']' not in word


def is_synopsis(argv: List[str]) -> bool:
    """A usage line (``[--opt ...]``, ``A|B``, ``...``) rather than a command to run."""
    return any((word.startswith('[') or word.endswith(']')) and '=' not in word or word == '...' or '<' in word
               or '|' in word and '=' not in word or word.startswith('$') for word in argv)


def cfg_options(argv: List[str]) -> Optional[List[str]]:
    """The ``KEY=VALUE`` words after ``--cfg-options`` (``None`` when there is no ``--cfg-options``)."""
    if '--cfg-options' not in argv:
        return None
    words = []
    for word in argv[argv.index('--cfg-options') + 1:]:
        if word.startswith('--'):
            break
        words.append(word)
    return words
