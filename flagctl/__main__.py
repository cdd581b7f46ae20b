from flagctl import main

main()
