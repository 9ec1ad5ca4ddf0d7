# ser_install_units.cmake — install step (CMakeLists.txt): the systemd units of deploy/systemd
# into PREFIX/lib/systemd/system with their ExecStart's /usr/local/bin/ser (the default
# prefix's binary) replaced by the binary this install puts in place, whatever --prefix was.
# Set before it runs: SER_UNIT_SRC (deploy/systemd), SER_UNIT_TMP (a build folder), SER_BINDIR.
if(IS_ABSOLUTE "${SER_BINDIR}")
  set(bin "${SER_BINDIR}/ser")
else()
  set(bin "${CMAKE_INSTALL_PREFIX}/${SER_BINDIR}/ser")
endif()
file(GLOB units "${SER_UNIT_SRC}/*.service")
set(made "")
foreach(unit IN LISTS units)
  get_filename_component(name "${unit}" NAME)
  file(READ "${unit}" text)
  string(REPLACE "/usr/local/bin/ser" "${bin}" text "${text}")
  file(WRITE "${SER_UNIT_TMP}/${name}" "${text}")
  list(APPEND made "${SER_UNIT_TMP}/${name}")
endforeach()
file(INSTALL DESTINATION "${CMAKE_INSTALL_PREFIX}/lib/systemd/system" TYPE FILE FILES ${made})
