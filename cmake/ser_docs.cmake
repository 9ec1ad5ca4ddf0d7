# ser_docs.cmake — the man page ser.1 and the bash completion, made at build time from the help
# texts of the built binary, so that neither can drift from the options the commands take:
#   cmake -DSER=build/ser -DOUT=build/share -DVERSION=0.1.0 -P cmake/ser_docs.cmake
# writes OUT/ser.1 (roff, man(7)) and OUT/ser.bash-completion. Nothing beyond CMake.
foreach(var SER OUT VERSION)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "ser_docs.cmake: -D${var}=... is needed")
  endif()
endforeach()

# The help text of `ser ARGS... --help`; a command whose help fails stops the build.
function(ser_help out_var)
  execute_process(COMMAND ${SER} ${ARGN} --help OUTPUT_VARIABLE text ERROR_VARIABLE err
                  RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0 OR NOT text MATCHES "usage")
    message(FATAL_ERROR "ser_docs.cmake: `ser ${ARGN} --help` exited ${rc} without a usage: ${err}")
  endif()
  set(${out_var} "${text}" PARENT_SCOPE)
endfunction()

# The long options named in a help text, once each, and --help; not those of other commands
# the text quotes (`ser step --out`).
function(ser_options out_var text)
  string(REGEX REPLACE "`[^`]*`" "" text "${text}")
  string(REGEX MATCHALL "--[a-z][a-z0-9-]*" opts "${text}")
  list(APPEND opts --help)
  list(REMOVE_DUPLICATES opts)
  list(SORT opts)
  string(REPLACE ";" " " opts "${opts}")
  set(${out_var} "${opts}" PARENT_SCOPE)
endfunction()

# Text for a no-fill roff block: backslashes and minus signs escaped, and no line that starts
# with a control character.
function(ser_roff out_var text)
  string(REPLACE "\\" "\\e" text "${text}")
  string(REPLACE "-" "\\-" text "${text}")
  string(REGEX REPLACE "\n([.'])" "\n\\\\&\\1" text "${text}")
  string(REGEX REPLACE "^([.'])" "\\\\&\\1" text "${text}")
  string(REGEX REPLACE "\n+$" "" text "${text}")
  set(${out_var} "${text}" PARENT_SCOPE)
endfunction()

# Cuts the paragraph that starts with HEAD out of *text_var into out_var (without HEAD).
function(ser_cut_paragraph out_var text_var head)
  set(text "${${text_var}}")
  string(FIND "${text}" "\n${head}" at)
  if(at LESS 0)
    message(FATAL_ERROR "ser_docs.cmake: `ser --help` has no '${head}' paragraph")
  endif()
  string(SUBSTRING "${text}" ${at} -1 rest)
  string(LENGTH "\n${head}" hn)
  string(SUBSTRING "${rest}" ${hn} -1 rest)
  string(FIND "${rest}" "\n\n" end)
  if(end LESS 0)
    set(para "${rest}")
    set(after "")
  else()
    string(SUBSTRING "${rest}" 0 ${end} para)
    string(SUBSTRING "${rest}" ${end} -1 after)
  endif()
  string(SUBSTRING "${text}" 0 ${at} before)
  string(STRIP "${para}" para)
  set(${out_var} "${para}" PARENT_SCOPE)
  set(${text_var} "${before}${after}" PARENT_SCOPE)
endfunction()

# --- what the binary says ---------------------------------------------------------------------
ser_help(top)
string(FIND "${top}" "commands:\n" at)
string(SUBSTRING "${top}" ${at} -1 block)
string(FIND "${block}" "\n\n" end)
string(SUBSTRING "${block}" 0 ${end} block)
string(REGEX MATCHALL "\n  [a-z]+ " names "${block}")
set(commands "")
foreach(n IN LISTS names)
  string(STRIP "${n}" n)
  list(APPEND commands ${n})
endforeach()
if(NOT commands)
  message(FATAL_ERROR "ser_docs.cmake: no commands in `ser --help`")
endif()

ser_help(bench_text bench)
if(NOT bench_text MATCHES "usage: ser bench <([a-z|]+)>")
  message(FATAL_ERROR "ser_docs.cmake: `ser bench --help` names no benchmarks")
endif()
string(REPLACE "|" ";" benches "${CMAKE_MATCH_1}")

ser_help(eval_text eval)
if(NOT eval_text MATCHES "Modes:(.*), all\\.")
  message(FATAL_ERROR "ser_docs.cmake: `ser eval --help` has no 'Modes: ..., all.'")
endif()
string(REGEX MATCHALL "[a-z]+ \\(" modes "${CMAKE_MATCH_1}")
string(REPLACE " (" "" modes "${modes}")
list(APPEND modes all)
string(REPLACE ";" " " modes_words "${modes}")

# --- the man page -----------------------------------------------------------------------------
set(desc "${top}")
ser_cut_paragraph(exit_status desc "exit status: ")
ser_cut_paragraph(environment desc "environment: ")
string(REGEX REPLACE "\n\n\n+" "\n\n" desc "${desc}")
ser_roff(desc "${desc}")
ser_roff(exit_status "${exit_status}")
ser_roff(environment "${environment}")
set(man ".\\\" ser.1: generated at build time from the help texts of ser ${VERSION}\n")
string(APPEND man ".\\\" (cmake/ser_docs.cmake); edit those, not this file.\n"
       ".TH SER 1 \"\" \"ser ${VERSION}\" \"User Commands\"\n"
       ".SH NAME\n"
       "ser \\- distributed trainer of self\\-supervised vision transformers\n"
       ".SH SYNOPSIS\n"
       ".B ser\n.I command\n.RI [ options ]\n.br\n.B ser \\-\\-help\n.br\n.B ser \\-\\-version\n"
       ".SH DESCRIPTION\n.nf\n${desc}\n.fi\n"
       ".SH COMMANDS\n")
set(bash_cases "")
foreach(cmd IN LISTS commands)
  set(subs "")
  if(cmd STREQUAL "bench")
    set(subs ${benches})
  endif()
  foreach(sub "" ${subs})
    ser_help(text ${cmd} ${sub})
    set(name "${cmd}")
    if(sub)
      set(name "${cmd} ${sub}")
    endif()
    ser_roff(body "${text}")
    string(APPEND man ".SS \"ser ${name}\"\n.nf\n${body}\n.fi\n")
    ser_options(opts "${text}")
    string(APPEND bash_cases "    \"${name}\") words=\"${opts}\" ;;\n")
  endforeach()
endforeach()
string(APPEND man ".SH \"EXIT STATUS\"\n.nf\n${exit_status}\n.fi\n"
       ".SH ENVIRONMENT\n.nf\n${environment}\n.fi\n"
       ".SH FILES\n"
       ".TP\n.I share/ser/configs/*.ini\njob presets (under the installation prefix)\n"
       ".TP\n.I share/doc/ser/*.md\nthe documentation: cli.md (every command), config.md (every job "
       "option), dataloader.md, checkpoints.md, status.md, export.md\n"
       ".TP\n.I lib/systemd/system/ser\\-*.service\nsystemd units of the coordinator, the data "
       "loader and the workers\n"
       ".SH \"SEE ALSO\"\n"
       "The status page of a running job: \\fBser status\\fR HOST:PORT.\n")
file(WRITE "${OUT}/ser.1" "${man}")

# --- the bash completion ----------------------------------------------------------------------
string(REPLACE ";" " " command_words "${commands}")
string(REPLACE ";" " " bench_words "${benches}")
file(WRITE "${OUT}/ser.bash-completion"
"# bash completion for ser: generated at build time from the help texts of ser ${VERSION}
# (cmake/ser_docs.cmake). Commands: ${command_words}.
_ser() {
    local cur=\${COMP_WORDS[COMP_CWORD]} prev=\${COMP_WORDS[COMP_CWORD-1]} cmd words
    case \$prev in
    --config|--weights|--out|--batch-file|--endpoint-file|--preview|--checkpoint|--full|\\
    --resume|--save|--data|--cache)
        compopt -o filenames 2>/dev/null
        COMPREPLY=(\$(compgen -f -- \"\$cur\"))
        return ;;
    --log-level)
        COMPREPLY=(\$(compgen -W \"error warning info debug\" -- \"\$cur\"))
        return ;;
    esac
    if [ \"\$COMP_CWORD\" -eq 1 ]; then
        COMPREPLY=(\$(compgen -W \"${command_words} --help --version\" -- \"\$cur\"))
        return
    fi
    cmd=\${COMP_WORDS[1]}
    if [ \"\$cmd\" = bench ]; then
        if [ \"\$COMP_CWORD\" -eq 2 ]; then
            COMPREPLY=(\$(compgen -W \"${bench_words} --help\" -- \"\$cur\"))
            return
        fi
        cmd=\"bench \${COMP_WORDS[2]}\"
    elif [ \"\$cmd\" = eval ] && [ \"\$COMP_CWORD\" -eq 2 ] && [[ \$cur != -* ]]; then
        COMPREPLY=(\$(compgen -W \"${modes_words}\" -- \"\$cur\"))
        return
    fi
    case \$cmd in
${bash_cases}    *) words=--help ;;
    esac
    if [[ \$cur == -* ]]; then
        COMPREPLY=(\$(compgen -W \"\$words\" -- \"\$cur\"))
    else
        compopt -o filenames 2>/dev/null
        COMPREPLY=(\$(compgen -f -- \"\$cur\"))
    fi
}
complete -F _ser ser
")
